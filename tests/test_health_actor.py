"""The HealthActor's own failures: SIGKILL and a wedge lose nothing and never hang the API."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
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
    return platform.pid_of(HEALTH_ACTOR)


def wait_persisted(platform: Platform, name: str, **expect: Any) -> None:
    """Wait until the HealthActor has written `name`'s record to Redis with a last tick (and `expect`'s values)."""
    client = redis.Redis.from_url(platform.settings.redis_url)
    key = keys.health_records(platform.settings.ray_namespace)

    def persisted() -> bool:
        raw = client.hget(key, name)
        record = json.loads(raw) if raw is not None else {}
        return record.get("last_tick_at") is not None and all(record.get(k) == v for k, v in expect.items())

    wait_for(persisted, 10, what=f"{name} persisted with {expect}")


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
    """What only the registry knows comes back: restarts of a process that is gone, and quarantines."""
    platform = own_platform
    with platform.ticker("steady", tenants=("good", "bad"), poison=("bad",)):
        first = platform.wait_state("steady", "RUNNING")
        platform.fault("steady", "raise")  # an exception restart, in a process that is about to go
        platform.wait_state("steady", "RUNNING", restarts_exception=1)
        os.kill(first["pid"], signal.SIGKILL)  # a process restart
        platform.wait_state("steady", "RUNNING", restarts_process=1, quarantined=1)
        platform.wait_state("api", "RUNNING")
        counted = {"exception": 1, "process": 1, "stalled": 0}
        wait_persisted(platform, "steady", restarts=counted, quarantined=1)
        wait_persisted(platform, "api")
        before = platform.liveness()["subsystems"]
        pid = health_pid(platform)
        os.kill(pid, signal.SIGKILL)
        probe_liveness_for(platform, 3)
        wait_for(lambda: health_pid(platform) != pid, 30, what="health restarted")
        wait_for(lambda: platform.get("/admin/liveness")[0] == 200, 10, what="registry loaded")
        after = platform.liveness()["subsystems"]
        assert set(after) == {"api", "steady"}
        for name, sub in after.items():
            assert sub["last_tick_at"] is not None and sub["state"] == "RUNNING", (name, sub)
            assert sub["restarts"] == before[name]["restarts"], name
            assert sub["quarantined"] == before[name]["quarantined"], name
            assert sub["last_error"] == before[name]["last_error"], name
        assert after["steady"]["restarts"] == counted and after["steady"]["quarantined"] == 1
        platform.wait_state("steady", "RUNNING", restarts_process=1, restarts_stalled=0)


def test_wedged_health_actor_gives_503_fast_and_is_restarted_by_the_api(own_platform: Platform) -> None:
    platform = own_platform
    with platform.ticker("steady2"):
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
