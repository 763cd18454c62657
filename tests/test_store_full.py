"""A Redis at its maxmemory: writes are 503 `store full`, reads work, nothing crashes or is lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
import redis.exceptions

from actors.scheduler import Scheduler
from store.embedded import EmbeddedRedis, free_port
from tests.a2a_agent import A2AAgent
from tests.support import start_platform, wait_for
from tests.test_scheduler import schedule, slots_of, workspace

MAXMEMORY = 32 * 1024 * 1024


FILLERS = 64  # of 64 KiB: 4 MiB a tenant's data could hold


def fill_to_the_limit(client: redis.Redis) -> None:
    """4 MiB of data, then the limit set 1 MiB below what is used: full until the data goes.

    (Filling up to the limit alone leaves Redis hovering around it: a write may pass when a
    buffer has just been freed. Past it by 1 MiB, every write is refused until space is freed.)
    """
    for n in range(FILLERS):
        client.set(f"filler:{n}", b"x" * 65536)
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 1024 * 1024)


def test_a_full_store_refuses_writes_and_everything_goes_on_once_freed(ray_session: dict, tmp_path: Path) -> None:
    """Acceptance e. Its own Redis and platform: a server with a small maxmemory, filled on purpose."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), maxmemory=MAXMEMORY)
    url = server.start()
    agent = A2AAgent().start()
    platform = start_platform(url, tmp_path / "data", subsystems=[Scheduler])
    try:
        client = redis.Redis.from_url(url)
        assert client.config_get("maxmemory") == {"maxmemory": str(MAXMEMORY)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        tenant = platform.new_tenant("full")
        ws = workspace(platform, tenant, agent.url)
        every_second = schedule(platform, tenant, ws, cron="* * * * * *")
        wait_for(lambda: slots_of(agent, every_second["id"]), 30, what="the first fire")
        pid = platform.pid_of("scheduler")
        fill_to_the_limit(client)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("one-more", "x")

        body = {"name": "more", "url": agent.url}
        assert platform.tenant_post(tenant, "/workspaces", body) == (503, {"error": "store full"})
        assert platform.tenant_post(tenant, "/events", {"event": "E", "payload": 1}) == (503, {"error": "store full"})
        assert platform.tenant_get(tenant, "/workspaces")[0] == 200  # reads work
        assert platform.tenant_get(tenant, f"/schedules/{every_second['id']}")[0] == 200
        assert len(platform.tenant_get(tenant, "/workspaces")[1]["workspaces"]) == 1  # nothing half-written
        assert platform.liveness()["store"]["full"] is True
        # The scheduler can claim and record nothing now; it backs off in the same process.
        runs = platform.tenant_get(tenant, f"/schedules/{every_second['id']}")[1]["run_count"]
        time.sleep(3)
        assert platform.tenant_get(tenant, f"/schedules/{every_second['id']}")[1]["run_count"] == runs
        assert platform.subsystem("scheduler")["state"] != "FAILED" and platform.pid_of("scheduler") == pid

        client.delete(*(f"filler:{n}" for n in range(FILLERS)))
        freed = time.time()
        assert platform.tenant_post(tenant, "/workspaces", body)[0] == 201
        wait_for(lambda: platform.subsystem("scheduler")["state"] == "RUNNING", 60, what="RUNNING again")
        wait_for(lambda: max(slots_of(agent, every_second["id"])) > freed, 30, what="fires again")
        assert platform.liveness()["store"]["full"] is False
        assert platform.pid_of("scheduler") == pid
        record = platform.tenant_get(tenant, f"/schedules/{every_second['id']}")[1]
        assert record["enabled"] is True and record["run_count"] >= 2
    finally:
        platform.close()
        agent.stop()
        server.stop()
