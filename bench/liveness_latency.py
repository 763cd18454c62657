"""/admin/liveness with 1,000 registered subsystems at 50 concurrent clients.

Baselines in the same run: `/livez` on the same server (a tiny body), and the floor for a
body this size: the same Starlette app in a process of its own under plain uvicorn, its
backend answering with the platform's own liveness body kept in memory (no Ray, no Redis).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
from typing import Any

import aiohttp
import harness
import ray
import uvicorn

from actors.runtime.handles import HEALTH_ACTOR
from api.app import create_app
from api.backend import Backend, Encoded
from api.context import ApiContext
from settings import Settings
from store.client import connect
from store.embedded import free_port
from tests.support import ADMIN_TOKEN, http, wait_for

SUBSYSTEMS = 1_000
CLIENTS = 50
REQUESTS = 10_000  # several of the API's refreshes of the liveness body (every 0.25 s)


async def load(url: str, token: str | None, encoding: str = "identity") -> list[float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers["Accept-Encoding"] = encoding  # aiohttp would ask for gzip (and decompress) by default
    remaining = REQUESTS

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            async with session.get(url, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
    return latencies


class FixedBackend(Backend):
    """The floor's platform: the liveness body is already encoded, in memory."""

    draining = False

    def __init__(self, body: bytes) -> None:
        self.body = Encoded.of(body)

    async def liveness(self) -> Encoded:
        return self.body

    async def readiness(self) -> dict[str, Any]:
        return {"ready": True, "unhealthy": []}

    async def inject_fault(self, subsystem: str, fault: str, seconds: float | None) -> None:
        raise NotImplementedError


def serve_floor(port: int, settings: Settings, body: bytes) -> None:
    context = ApiContext.build(
        settings, backend=FixedBackend(body), redis=connect(settings.redis_url), admin_token=ADMIN_TOKEN
    )
    uvicorn.run(create_app(context), host="127.0.0.1", port=port, log_level="warning", lifespan="off")


def main() -> None:
    with harness.platform() as platform:
        health = ray.get_actor(HEALTH_ACTOR, namespace=platform.settings.ray_namespace)
        names = [f"bench-{n}" for n in range(SUBSYSTEMS)]
        ray.get(health.register.remote([{"name": n, "interval_s": 60.0} for n in names]))
        reports = {n: {"state": "RUNNING", "tick_age_s": 0.0, "exception_restarts": 0} for n in names}
        ray.get(health.report.remote({"pid": os.getpid(), "node": None, "reports": reports}))
        assert len(platform.liveness()["subsystems"]) == SUBSYSTEMS + 1
        status, body = http("GET", platform.url + "/admin/liveness", token=ADMIN_TOKEN)
        assert status == 200, status
        raw = json.dumps(body, separators=(",", ":")).encode()
        port = free_port()
        floor = multiprocessing.get_context("spawn").Process(
            target=serve_floor, args=(port, platform.deployment.settings, raw)
        )
        floor.start()
        try:
            floor_url = f"http://127.0.0.1:{port}"
            wait_for(lambda: http("GET", floor_url + "/livez")[0] == 200, 30, what="the floor serving")
            runs: dict[str, list[float]] = {}
            for name, url, token in (
                ("/livez", platform.url + "/livez", None),
                ("/admin/liveness", platform.url + "/admin/liveness", ADMIN_TOKEN),
                ("floor", floor_url + "/admin/liveness", ADMIN_TOKEN),
            ):
                asyncio.run(load(url, token))  # warm up
                runs[name] = asyncio.run(load(url, token))
            runs["/admin/liveness, gzip"] = asyncio.run(load(platform.url + "/admin/liveness", ADMIN_TOKEN, "gzip"))
        finally:
            floor.terminate()
            floor.join(10)
    print(f"{SUBSYSTEMS:,} subsystems ({len(raw):,} bytes), {CLIENTS} concurrent clients, {REQUESTS:,} requests each")
    for name, latencies in runs.items():
        print(f"{name}: {harness.summary(latencies)}")
    floor_ratio = harness.ratios(runs["/admin/liveness"], runs["floor"])
    print(f"ratio liveness / floor (the same body in memory, plain uvicorn): {floor_ratio}")
    print(f"ratio liveness / livez: {harness.ratios(runs['/admin/liveness'], runs['/livez'])}")


if __name__ == "__main__":
    main()
