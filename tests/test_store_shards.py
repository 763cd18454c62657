"""store.shards and actors.runtime.shards against Redis: leases with fencing tokens, rendezvous shares, handovers."""

from __future__ import annotations

import asyncio
import dataclasses

import redis.asyncio as aioredis

from actors.runtime.shards import ShardOwner
from store import keys, schedules, shards
from store.keys import ALL_SHARDS
from store.records import new_id
from tests.test_store_schedules import NOW, stored

NS, KIND = "ns", "scheduler"


async def take(store: aioredis.Redis, owner: str, shard: int, token: str = "", ttl_ms: int = 10_000) -> shards.Lease:
    return (await shards.acquire(store, NS, KIND, owner, ttl_ms, {shard: token}))[shard]


async def test_a_lease_is_one_owners_until_released_or_expired_and_each_holder_gets_a_higher_token(
    store: aioredis.Redis,
) -> None:
    a = await take(store, "a", 3)
    assert a.held and a.token_or_owner == "1"
    assert (await take(store, "a", 3, a.token_or_owner)).token_or_owner == "1"  # a renewal keeps the token
    refused = await take(store, "b", 3)
    assert not refused.held and refused.token_or_owner == "a"
    assert await shards.release(store, NS, KIND, "b", 3, "1") is False  # only its holder lets go
    assert await shards.release(store, NS, KIND, "a", 3, "1") is True
    b = await take(store, "b", 3, ttl_ms=200)
    assert b.held and b.token_or_owner == "2"
    _, found = await shards.holders(store, NS, KIND, [3])
    assert found[3].prev_owner == "a" and found[3].prev_end <= found[3].since
    await asyncio.sleep(0.3)  # b's lease runs out: c need not wait for a release
    c = await take(store, "c", 3)
    assert c.held and c.token_or_owner == "3"
    _, found = await shards.holders(store, NS, KIND, [3])
    assert found[3].prev_owner == "b" and found[3].prev_end <= found[3].since


async def test_a_replica_started_again_takes_its_lease_and_its_old_process_is_fenced_out(store: aioredis.Redis) -> None:
    first = await shards.incarnation(store, NS, KIND, "a")
    second = await shards.incarnation(store, NS, KIND, "a")  # Ray started replica a again
    assert (first, second) == ("a#1", "a#2")
    old = await take(store, first, 9)
    new = await take(store, second, 9)
    assert new.held and new.token_or_owner != old.token_or_owner
    assert not (await take(store, first, 9, old.token_or_owner)).held  # the old process cannot renew
    assert not (await take(store, first, 9)).held  # nor take it back
    assert not (await take(store, "b#1", 9)).held  # another replica waits as for any holder


async def test_a_claim_and_a_completion_with_a_stale_fence_write_nothing(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    shard = keys.shard_of(tenant_id)
    schedule_id = await stored(store, tenant_id)
    a = await take(store, "a", shard)
    fence_a = shards.fence_of(shard, NS, KIND, a.token_or_owner)
    claim = schedules.Claim(tenant_id, schedule_id, int(NOW) + 60, int(NOW) + 60, int(NOW) + 120, 10**10, fence_a)
    assert await schedules.claim(store, [claim]) == [True]
    await shards.release(store, NS, KIND, "a", shard, a.token_or_owner)
    b = await take(store, "b", shard)
    # a lost the shard: its completion is refused and the slot stays in flight for b to deliver again.
    done = schedules.Completion(schedule_id, int(NOW) + 60, tenant_id, new_id(), None, fence_a)
    assert await schedules.complete_many(store, [done], max_len=10) == [False]
    assert [lease.schedule_id for lease in await schedules.expired_leases(store, 10**11, 10)] == [schedule_id]
    later = schedules.Claim(tenant_id, schedule_id, int(NOW) + 120, int(NOW) + 120, int(NOW) + 180, 10**10, fence_a)
    assert await schedules.claim(store, [later]) == [False]
    fence_b = shards.fence_of(shard, NS, KIND, b.token_or_owner)
    assert await schedules.claim(store, [dataclasses.replace(later, fence=fence_b)]) == [True]
    assert await schedules.complete_many(store, [dataclasses.replace(done, fence=fence_b)], max_len=10) == [True]


def test_each_member_gets_an_even_share_and_a_newcomer_moves_at_most_twice_its_own() -> None:
    names = ["scheduler"] + [f"scheduler-{i}" for i in range(1, 9)]
    for n in range(1, len(names)):
        before, after = shards.assigned(names[:n]), shards.assigned(names[: n + 1])
        assert sorted(s for got in after.values() for s in got) == list(ALL_SHARDS)
        assert {len(got) for got in after.values()} <= {64 // (n + 1), 64 // (n + 1) + 1}, after
        owner = {s: m for m, got in before.items() for s in got}
        moved = [s for m, got in after.items() for s in got if owner[s] != m]
        assert len(moved) <= 2 * len(after[names[n]]), (n, len(moved))  # bounded loads move a little more
    assert shards.assigned(list(reversed(names))) == shards.assigned(names)  # members agree whatever their order
    assert shards.assigned([]) == {}


async def test_replicas_share_the_shards_and_hand_them_over_only_when_idle(store: aioredis.Redis) -> None:
    clock = [0.0]
    a = ShardOwner(store, NS, KIND, "scheduler", lease_s=5.0, clock=lambda: clock[0])
    await a.refresh()
    assert a.owned() == list(ALL_SHARDS)
    b = ShardOwner(store, NS, KIND, "scheduler-1", lease_s=5.0, clock=lambda: clock[0])
    await b.refresh()
    assert b.owned() == []  # wanted, but still a's
    mine = set(b.wanted)
    busy = min(mine)
    clock[0] += 2.0  # a's next refresh: it gives up b's shards, but one it is still busy with
    await a.refresh(busy=lambda shard: shard == busy)
    assert set(a.owned()).isdisjoint(mine) and busy in a.held()
    await b.refresh()
    assert set(b.owned()) == mine - {busy}
    clock[0] += 2.0
    await a.refresh()  # idle now: let go
    clock[0] += 0.5
    await b.refresh()
    assert set(b.owned()) == mine
    now, found = await shards.holders(store, NS, KIND)
    holders = {shard: h.replica for shard, h in found.items() if h.expires > now}
    assert holders == {s: "scheduler-1" if s in mine else "scheduler" for s in ALL_SHARDS}
    await b.leave()
    clock[0] += 2.0
    await a.refresh()
    assert a.owned() == list(ALL_SHARDS)  # b left: a has everything again, at once


async def test_a_leaving_replica_lets_every_shard_go_once_idle_and_the_others_take_them(store: aioredis.Redis) -> None:
    clock = [0.0]
    a = ShardOwner(store, NS, KIND, "scheduler", lease_s=5.0, clock=lambda: clock[0])
    b = ShardOwner(store, NS, KIND, "scheduler-1", lease_s=5.0, clock=lambda: clock[0])
    await a.refresh()
    await b.refresh()
    clock[0] += 2.0
    await a.refresh()
    await b.refresh()
    assert a.owned() and b.owned()
    busy = min(a.owned())
    a.start_leaving()
    await a.refresh(busy=lambda shard: shard == busy)  # at once, not at its next third of a lease
    assert a.owned() == [] and a.held() == [busy]  # no new work anywhere; one shard still finishing
    assert await shards.announce(store, NS, KIND, "scheduler-1", 5000) == ["scheduler-1"]
    clock[0] += 2.0  # b's next refresh
    await b.refresh()
    assert set(b.owned()) == set(ALL_SHARDS) - {busy}
    await a.refresh()  # idle now (a leaving replica refreshes every WAITING_RETRY_S)
    assert a.tokens == {}
    clock[0] += 0.5
    await b.refresh()
    assert b.owned() == list(ALL_SHARDS)
