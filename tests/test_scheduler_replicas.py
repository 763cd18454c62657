"""Scheduler replicas: the shards move between them as they come and go, no slot is missed, and
no two replicas ever hold one shard's valid lease (watched in Redis throughout)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from actors.runtime.handles import NamedActor
from actors.scheduler import Scheduler
from store import keys, shards
from store.client import connect
from store.keys import ALL_SHARDS
from tests.a2a_agent import A2AAgent
from tests.support import Platform, start_platform, sync_redis, wait_for
from tests.test_scheduler import schedule, slots_of, workspace

LEASE_S = 3.0
PERIOD_S = 5  # every schedule's slots: a handover takes well under a period, so no slot folds into the next


@pytest.fixture(scope="module")
def replicated(ray_session: dict, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    deployed = start_platform(
        redis_url,
        tmp_path_factory.mktemp("replicas"),
        subsystems=[Scheduler],
        shard_lease_s=LEASE_S,
        fire_timeout_s=10.0,  # a fire that fails is not sent again: give a busy test machine time
    )
    yield deployed
    deployed.close()


@dataclass
class LeaseWatch:
    """Reads every shard's lease from Redis every 50 ms and records anything that breaks exclusivity."""

    redis_url: str
    namespace: str
    samples: int = 0
    owners_seen: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    valid: dict[int, str] = field(default_factory=dict)  # shard -> the owner of its valid lease, last read
    history: dict[int, list[tuple[float, str, int]]] = field(default_factory=dict)  # shard -> (s, owner, token)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> LeaseWatch:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._watch()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def owners(self) -> set[str]:
        return set(self.valid.values())

    async def _watch(self) -> None:
        redis = connect(self.redis_url)
        tokens: dict[int, dict[int, str]] = {s: {} for s in ALL_SHARDS}  # shard -> token -> owner
        try:
            while not self._stop.is_set():
                now, found = await shards.holders(redis, self.namespace, "scheduler")
                valid = {}
                for shard, lease in found.items():
                    if not lease.owner:
                        continue
                    # (a replica started again takes its own lease over: one replica, two processes)
                    if lease.since < lease.prev_end and lease.prev_replica != lease.replica:
                        self.problems.append(
                            f"shard {shard}: {lease.owner} took it at {lease.since}, "
                            f"before {lease.prev_owner}'s lease ended at {lease.prev_end}"
                        )
                    known = tokens[shard].setdefault(lease.token, lease.owner)
                    if known != lease.owner:
                        self.problems.append(f"shard {shard}: token {lease.token} held by {known} and {lease.owner}")
                    if lease.token < max(tokens[shard]):
                        self.problems.append(f"shard {shard}: token went back to {lease.token}")
                    if lease.expires > now:
                        valid[shard] = lease.replica
                    seen = self.history.setdefault(shard, [])
                    holder = lease.replica if lease.expires > now else ""
                    if not seen or seen[-1][1:] != (holder, lease.token):
                        seen.append((now / 1000, holder, lease.token))
                self.valid = valid
                self.owners_seen |= set(valid.values())
                self.samples += 1
                await asyncio.sleep(0.05)
        finally:
            await redis.aclose()


def test_scaling_1_3_1_misses_no_slot_and_never_doubles_a_lease(replicated: Platform, agent: A2AAgent) -> None:
    """Acceptance c."""
    platform = replicated
    created = []
    tenant_of: dict[str, str] = {}
    tenants: dict[str, dict] = {}
    for n in range(8):  # tenants in (most likely) eight different shards
        tenant = platform.new_tenant(f"steady-{n}")
        ws = workspace(platform, tenant, agent.url)
        made = [schedule(platform, tenant, ws, cron=f"*/{PERIOD_S} * * * * *") for _ in range(2)]
        created += made
        tenant_of.update({c["id"]: tenant["id"] for c in made})
        tenants[tenant["id"]] = tenant
    first = (int(time.time()) // PERIOD_S + 1) * PERIOD_S  # the first slot after every schedule exists
    with LeaseWatch(platform.settings.redis_url, platform.settings.ray_namespace) as watch:
        wait_for(lambda: watch.owners() == {"scheduler"}, 15, what="replica 0 holding every shard")
        time.sleep(2 * PERIOD_S)
        marks = {"to 3": time.time()}
        platform.deployment.scale(Scheduler, 3)
        three = {"scheduler", "scheduler-1", "scheduler-2"}
        wait_for(lambda: watch.owners() == three, 30, what="three replicas sharing the shards")
        # Each is a subsystem of its own in /admin/liveness, and says how many shards it holds.
        wait_for(
            lambda: all((s := platform.subsystem(n))["state"] == "RUNNING" and s["progress"]["shards"] for n in three),
            15,
            what="each replica RUNNING with its shards",
        )
        time.sleep(2 * PERIOD_S)
        marks["to 1"] = time.time()
        platform.deployment.scale(Scheduler, 1)
        marks["at 1"] = time.time()
        wait_for(lambda: watch.owners() == {"scheduler"}, 30, what="replica 0 alone again")
        assert set(platform.liveness()["subsystems"]) >= {"scheduler"}
        assert not set(platform.liveness()["subsystems"]) & {"scheduler-1", "scheduler-2"}
        time.sleep(2 * PERIOD_S)
        end = time.time()
    assert watch.problems == [] and watch.samples > 100, (watch.problems[:5], watch.samples)
    assert watch.owners_seen == {"scheduler", "scheduler-1", "scheduler-2"}
    # Every slot of the run was delivered (a fire cut short by a stopping replica comes again later).
    expected = {s["id"]: set(range(first, int(end), PERIOD_S)) for s in created}

    def missing() -> dict[str, list[int]]:
        gaps = {i: sorted(slots - set(slots_of(agent, i))) for i, slots in expected.items()}
        return {i: gap for i, gap in gaps.items() if gap}

    try:
        wait_for(lambda: not missing(), 30, what="every slot delivered")
    except AssertionError:
        gaps = missing()
        moves = {keys.shard_of(tenant_of[i]): watch.history.get(keys.shard_of(tenant_of[i])) for i in gaps}
        errors = {i: platform.tenant_get(tenants[tenant_of[i]], f"/schedules/{i}")[1] for i in gaps}
        client = sync_redis(platform.settings.redis_url)
        inflight = {i: client.zrange(keys.schedules_inflight(keys.shard_of(i)), 0, -1, withscores=True) for i in gaps}
        errors = {"records": errors, "inflight": inflight, "progress": platform.subsystem("scheduler")["progress"]}
        raise AssertionError(
            f"slots never delivered: {gaps}; errors {errors}; scaled at {marks}; leases {moves}"
        ) from None
    assert sum(len(v) for v in expected.values()) >= 16 * 5


def test_a_drain_stops_every_replica_however_many_were_started(replicated: Platform) -> None:
    """Run last in the module: it drains the platform."""
    platform = replicated
    platform.deployment.scale(Scheduler, 2)  # more than the settings say (1)
    namespace = platform.settings.ray_namespace
    assert NamedActor("scheduler-1", namespace).exists()
    platform.deployment.drain()
    assert not NamedActor("scheduler-1", namespace).exists() and not NamedActor("scheduler", namespace).exists()
