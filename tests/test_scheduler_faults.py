"""Scheduler under faults: SIGKILL mid-burst, two schedulers at once, Redis restarted."""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Iterator

import pytest
import ray
import redis

from actors.runtime.subsystem import SubsystemSpec
from actors.scheduler import Scheduler
from driver import SUBSYSTEMS
from store import keys
from store.embedded import EmbeddedRedis, free_port
from store.records import now_rfc3339
from store.schedules import latest_slot
from tests.a2a_agent import A2AAgent
from tests.support import Platform, start_platform, sync_redis, wait_for
from tests.test_scheduler import read, schedule, slots_of, workspace


@pytest.fixture
def redis_server(tmp_path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_platform(ray_session: dict, redis_server: EmbeddedRedis, tmp_path) -> Iterator[Platform]:
    deployed = start_platform(redis_server.url, tmp_path / "data", subsystems=SUBSYSTEMS, fire_timeout_s=2.0)
    yield deployed
    deployed.close()


def message_counts(agent: A2AAgent) -> collections.Counter[str]:
    with agent.lock:
        return collections.Counter(r["body"]["params"]["message"]["messageId"] for r in agent.requests)


def ticks_after(platform: Platform, name: str, count: int) -> None:
    """Wait until the subsystem has ticked `count` more times (each tick moves its last_tick_at)."""
    seen = {platform.subsystem(name)["last_tick_at"]}

    def ticked() -> bool:
        seen.add(platform.subsystem(name)["last_tick_at"])
        return len(seen) > count

    wait_for(ticked, 30, interval_s=0.05, what=f"{count} more ticks of {name}")


def once_a_minute_soon() -> tuple[str, int]:
    """A 6-field cron whose next slot is 5-7 s away and whose following one is a minute later."""
    slot = int(time.time()) + 6
    return f"{slot % 60} * * * * *", slot


def test_sigkill_mid_burst_delivers_every_slot_at_least_once(own_platform: Platform) -> None:
    platform = own_platform
    agent = A2AAgent(delay_s=1.0).start()  # 200 fires at 64 in flight take about 4 s
    try:
        tenant = platform.new_tenant("burst")
        ws = workspace(platform, tenant, agent.url)
        cron, slot = once_a_minute_soon()
        created = [schedule(platform, tenant, ws, cron=cron) for _ in range(200)]
        pid = platform.subsystem("scheduler")["pid"]
        wait_for(lambda: len(agent.requests) >= 30, 30, interval_s=0.02, what="burst under way")
        os.kill(pid, signal.SIGKILL)
        # What the dead scheduler had claimed and not recorded (it can write nothing more).
        client = sync_redis(platform.settings.redis_url)
        leased = [m for shard in keys.ALL_SHARDS for m in client.zrange(keys.schedules_inflight(shard), 0, -1)]
        in_flight_at_kill = {"cron-" + member.decode().replace(":", "-") for member in leased}
        expected = {f"cron-{c['id']}-{slot}" for c in created}
        wait_for(lambda: expected <= set(message_counts(agent)), 60, interval_s=0.5, what="all 200 delivered")
        wait_for(lambda: all(read(platform, tenant, c["id"])["run_count"] >= 1 for c in created), 30)
        counts = message_counts(agent)
        assert set(counts) == expected  # every slot, and nothing else
        # A slot is delivered again only if it was in flight at the kill, and then once more, same messageId.
        again = {m for m, n in counts.items() if n > 1}
        assert again <= in_flight_at_kill, again - in_flight_at_kill
        assert max(counts.values()) <= 2, counts.most_common(3)
        assert 0 < len(in_flight_at_kill) <= 64  # the kill came mid-burst; at most the fires in flight
        sub = platform.wait_state("scheduler", "RUNNING", restarts_process=1)
        assert sub["pid"] != pid
    finally:
        agent.stop()


def test_two_schedulers_never_deliver_one_slot_twice(own_platform: Platform) -> None:
    platform = own_platform
    agent = A2AAgent().start()
    platform.add_subsystem(Scheduler, SubsystemSpec("scheduler-twin", interval_s=1.0))
    try:
        tenant = platform.new_tenant("twins")
        ws = workspace(platform, tenant, agent.url)
        created = [schedule(platform, tenant, ws, cron="* * * * * *") for _ in range(30)]
        counts = wait_for(lambda: (lambda c: c if sum(c.values()) >= 30 * 4 else None)(message_counts(agent)), 30)
        assert max(counts.values()) == 1, counts.most_common(3)
        assert all(read(platform, tenant, c["id"])["last_status"] == "ok" for c in created)
        # The twin really took part (its count reaches /admin/liveness with its beats, within a second or two).
        wait_for(lambda: platform.subsystem("scheduler-twin")["progress"]["fired"] > 0, 10, what="the twin fired")
    finally:
        platform.remove_subsystem("scheduler-twin")
        agent.stop()


def test_redis_restart_under_a_running_scheduler_loses_no_schedule(
    own_platform: Platform, redis_server: EmbeddedRedis
) -> None:
    platform = own_platform
    agent = A2AAgent().start()
    try:
        tenant = platform.new_tenant("outage")
        ws = workspace(platform, tenant, agent.url)
        created = [schedule(platform, tenant, ws) for _ in range(5)]
        wait_for(lambda: all(read(platform, tenant, c["id"])["run_count"] >= 1 for c in created), 30)
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGKILL)
        redis_server.process.wait()
        platform.wait_state("scheduler", "BACKOFF")
        redis_server.start()
        platform.wait_state("scheduler", "RUNNING", timeout_s=45)
        counts = wait_for(lambda: {c["id"]: read(platform, tenant, c["id"])["run_count"] for c in created}, 10)
        wait_for(
            lambda: all(read(platform, tenant, c["id"])["run_count"] > counts[c["id"]] for c in created),
            30,
            what="every schedule fires again",
        )
        sub = platform.subsystem("scheduler")
        assert sub["restarts"]["process"] == 0 and sub["restarts"]["stalled"] == 0
    finally:
        agent.stop()


def test_after_downtime_an_overdue_schedule_fires_once_for_its_latest_slot(own_platform: Platform) -> None:
    """An hour of downtime: one fire, at once, for the latest missed slot; no backfill."""
    platform = own_platform
    agent = A2AAgent().start()
    try:
        namespace = platform.settings.ray_namespace
        ray.kill(ray.get_actor("scheduler", namespace=namespace), no_restart=True)
        tenant = platform.new_tenant("downtime")
        # Once a minute, at the second that was 10 s ago: the latest missed slot is 10 s old
        # and the next one 50 s away, so only a catch-up fire can arrive within this test.
        cron = f"{(int(time.time()) - 10) % 60} * * * * *"
        created = schedule(platform, tenant, workspace(platform, tenant, agent.url), cron=cron)
        latest = latest_slot(cron, "UTC", time.time(), 0)
        client = redis.Redis.from_url(platform.settings.redis_url)
        overdue = latest - 3600  # as if down for an hour
        client.zadd(keys.tenant_due(tenant["id"]), {created["id"]: overdue})
        client.zadd(keys.schedules_due_tenants(keys.shard_of(tenant["id"])), {tenant["id"]: overdue})
        platform.deployment.start(Scheduler)
        wait_for(lambda: slots_of(agent, created["id"]), 30, what="the catch-up fire")
        after = wait_for(lambda: (lambda s: s if s["run_count"] else None)(read(platform, tenant, created["id"])), 10)
        ticks_after(platform, "scheduler", 3)  # a backfill storm would show itself within these ticks
        assert slots_of(agent, created["id"]) == [latest]  # one fire, the latest missed slot
        assert (
            after["next_run_at"] == now_rfc3339(latest + 60) and read(platform, tenant, created["id"])["run_count"] == 1
        )
    finally:
        agent.stop()
