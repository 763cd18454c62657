"""The HealthActor's own failures: SIGKILL and a wedge lose nothing and never hang the API."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest
import ray
import redis

from actors.runtime.handles import HEALTH_ACTOR
from store import keys
from tests.support import Platform, start_platform, wait_for


@pytest.fixture
def own_platform(ray_session: dict, redis_url: str, tmp_path) -> Iterator[Platform]:
    deployed = start_platform(redis_url, tmp_path)
    yield deployed
    deployed.close()


def health_pid(platform: Platform) -> int:
    handle = ray.get_actor(HEALTH_ACTOR, namespace=platform.settings.ray_namespace)
    return ray.get(handle.ping.remote(), timeout=10)["pid"]


def wait_persisted(platform: Platform, name: str) -> None:
    """Wait until the HealthActor has written `name`'s last tick to Redis."""
    client = redis.Redis.from_url(platform.settings.redis_url)
    key = keys.health_records(platform.settings.ray_namespace)

    def persisted() -> bool:
        raw = client.hget(key, name)
        return raw is not None and json.loads(raw)["last_tick_at"] is not None

    wait_for(persisted, 10, what=f"{name} persisted")


def probe_liveness_for(platform: Platform, seconds: float) -> list[int]:
    """Call /admin/liveness repeatedly; every answer is JSON, none hangs (the deadline is 2 s)."""
    statuses = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status, body = platform.get("/admin/liveness", timeout_s=5)
        assert isinstance(body, dict), body
        assert status == 200 or (status == 503 and "error" in body), (status, body)
        statuses.append(status)
        time.sleep(0.05)
    return statuses


def test_sigkilled_health_actor_returns_with_its_registry(own_platform: Platform) -> None:
    platform = own_platform
    platform.add_ticker("steady")
    platform.wait_state("steady", "RUNNING")
    platform.wait_state("api", "RUNNING")
    wait_persisted(platform, "steady")
    wait_persisted(platform, "api")
    pid = health_pid(platform)
    os.kill(pid, signal.SIGKILL)
    probe_liveness_for(platform, 3)
    wait_for(lambda: health_pid(platform) != pid, 30, what="health restarted")
    wait_for(lambda: platform.get("/admin/liveness")[0] == 200, 10, what="registry loaded")
    snapshot = platform.liveness()
    assert set(snapshot["subsystems"]) == {"api", "steady"}
    for name, sub in snapshot["subsystems"].items():
        assert sub["last_tick_at"] is not None, name
        assert sub["state"] in ("RUNNING",), (name, sub)
    platform.wait_state("steady", "RUNNING", restarts_process=0, restarts_stalled=0)


def test_wedged_health_actor_gives_503_fast_and_is_restarted_by_the_api(own_platform: Platform) -> None:
    platform = own_platform
    platform.add_ticker("steady2")
    platform.wait_state("steady2", "RUNNING")
    wait_persisted(platform, "steady2")
    pid = health_pid(platform)
    os.kill(pid, signal.SIGSTOP)  # the process is alive but answers nothing
    try:
        statuses = probe_liveness_for(platform, 4)
        assert 503 in statuses
        status, body = platform.get("/readyz", timeout_s=5)
        assert status == 503 and "error" in body
        wait_for(lambda: health_pid(platform) != pid, 60, what="API watchdog restarts health")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    sub = platform.wait_state("steady2", "RUNNING")
    assert sub["restarts"] == {"exception": 0, "process": 0, "stalled": 0}
    wait_for(lambda: platform.subsystem("api")["progress"]["health_kills"] == 1, 10, what="kill counted")
