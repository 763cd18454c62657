"""The API actor's heartbeat is a real request through its own HTTP stack: when that fails, it stops beating."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from actors.api import ApiActor
from actors.runtime.subsystem import SubsystemSpec
from settings import Settings
from store.embedded import free_port
from tests.support import ADMIN_TOKEN
from tests.test_subsystem import Beats, running


async def eventually(condition: Callable[[], Any], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


def beats_of(beats: Beats) -> int:
    """How many beats (completed ticks) the API has reported: each report dates its last one."""
    return len(
        {
            round(batch["sent_at"] - batch["reports"]["api"]["tick_age_s"], 3)
            for batch in beats.batches
            if "tick_age_s" in batch["reports"].get("api", {})
        }
    )


async def test_the_api_beats_only_while_its_http_stack_answers(
    ray_session: dict, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        ray_namespace=f"t{uuid.uuid4().hex[:10]}",
        redis_url=redis_url,
        data_dir=tmp_path,
        api_port=free_port(),
        channel_secret_key=Fernet.generate_key().decode(),
    )
    beats = Beats()
    # In this process, not in Ray: the same class, its loops and its uvicorn, with a short interval.
    api = ApiActor(settings, ADMIN_TOKEN, spec=SubsystemSpec("api", interval_s=0.2), send_beats=beats)
    async with running(api):
        await eventually(lambda: beats_of(beats) >= 3)
        (livez,) = [r for r in api.app.router.routes if isinstance(r, Route) and r.path == "/livez"]
        serving = livez.app
        livez.app = PlainTextResponse("broken", status_code=500)  # the HTTP stack answers, wrongly
        await eventually(lambda: api.main_loop.exception_restarts >= 1)
        assert api.main_loop.last_error == "RuntimeError: self-probe GET /livez answered 500"
        await eventually(lambda: api._report()["state"] in ("BACKOFF", "FAILED"))
        stopped_at = beats_of(beats)
        await eventually(lambda: api.main_loop.exception_restarts >= 3)  # more ticks tried, none completed
        assert beats_of(beats) == stopped_at
        livez.app = serving
        await eventually(lambda: beats_of(beats) > stopped_at)
        await eventually(lambda: api._report()["state"] == "RUNNING", timeout_s=90)
