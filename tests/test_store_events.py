"""store.events, store.broadcast, store.tenants and store.health against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from store import broadcast, events, health, keys, tenants
from store.quotas import QuotaExceeded
from store.records import new_id


async def test_append_then_read_after_heads_and_counts(store: aioredis.Redis) -> None:
    a, b, empty = new_id(), new_id(), new_id()
    ids = [await events.append(store, "E", a, None, {"n": n}, max_len=100, per_s=100) for n in range(3)]
    await events.append(store, "E", b, "w", {"n": 0}, max_len=100, per_s=100)
    heads = await events.heads(store, [a, b, empty])
    assert heads[a] == ids[-1] and heads[empty] == "0-0"
    assert [i for i, _ in await events.after(store, a, ids[0], 10)] == ids[1:]
    assert await events.count_after(store, {a: ids[0], b: "0-0", empty: "0-0"}, cap=10) == 3
    assert await events.count_after(store, {a: "0-0"}, cap=2) == 2
    read = dict(await events.read_new(store, {a: ids[1], b: heads[b], empty: "0-0"}, count=10, block_ms=10))
    assert list(read) == [a] and [e[0].decode() for e in read[a]] == [ids[2]]
    assert await events.read_new(store, {}, count=10, block_ms=10) == []


async def test_a_key_that_is_no_stream_is_found_by_its_kind(store: aioredis.Redis) -> None:
    good, bad, empty = new_id(), new_id(), new_id()
    await events.append(store, "E", good, None, {}, max_len=10, per_s=100)
    await store.set(keys.events(bad), "not a stream")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        await events.read_new(store, {good: "0-0", bad: "0-0"}, count=10, block_ms=10)
    assert await events.kinds(store, [good, bad, empty]) == {good: "stream", bad: "string", empty: "none"}
    assert (await events.heads(store, [bad]))[bad] == "0-0"


async def test_broadcast_positions_mark_the_deployment_started(store: aioredis.Redis) -> None:
    assert await broadcast.load(store, "ns") is None and not await broadcast.started(store, "ns")
    await broadcast.start(store, "ns", {})
    assert await broadcast.started(store, "ns") and await broadcast.load(store, "ns") == {}
    await store.sadd(keys.TENANTS, "t1", "t2")
    await broadcast.save(store, "ns", {"t1": "5-0"})
    await broadcast.save(store, "ns", {"t2": "6-0", "deleted": "7-0"})
    assert await broadcast.load(store, "ns") == {"t1": "5-0", "t2": "6-0"}  # no position for a tenant that is gone
    assert await broadcast.load(store, "other") is None


async def test_a_tenant_is_created_with_its_token_digest_and_index(store: aioredis.Redis) -> None:
    tenant = await tenants.create_tenant(store, "acme")
    assert await tenants.tenant_for_token(store, tenant["token"]) == tenant["id"]
    assert await tenants.tenant_for_token(store, tenant["token"] + "x") is None
    assert await tenants.ids(store) == [tenant["id"]]
    stored = await store.hgetall(keys.tenant(tenant["id"]))
    assert tenant["token"].encode() not in b"".join(stored.values())
    older = new_id()
    await store.hset(keys.tenant(older), mapping={"id": older, "name": "old"})
    assert await tenants.index_existing(store) == 1
    assert await tenants.ids(store) == sorted([tenant["id"], older])


async def test_the_health_registry_is_saved_and_loaded_by_name(store: aioredis.Redis) -> None:
    await health.save(store, "ns", {"a": ('{"e": 1}', '{"r": 1}'), "b": ('{"e": 2}', None)})
    assert await health.load(store, "ns") == ({"a": b'{"e": 1}', "b": b'{"e": 2}'}, {"a": b'{"r": 1}'})
    await health.save(store, "ns", {"a": (None, None)})
    assert await health.load(store, "ns") == ({"b": b'{"e": 2}'}, {})
    assert await health.load(store, "other") == ({}, {})


async def test_a_new_token_replaces_the_old_one_in_one_step(store: aioredis.Redis) -> None:
    tenant = await tenants.create_tenant(store, "rotating")
    token = await tenants.rotate_token(store, tenant["id"])
    assert token is not None and token != tenant["token"]
    assert await tenants.tenant_for_token(store, tenant["token"]) is None
    assert await tenants.tenant_for_token(store, token) == tenant["id"]
    assert await tenants.rotate_token(store, new_id()) is None
    assert await tenants.get(store, tenant["id"]) == {
        "id": tenant["id"],
        "name": "rotating",
        "created_at": tenant["created_at"],
    }
    assert await tenants.delete(store, tenant["id"], "ns") is True
    assert await tenants.delete(store, tenant["id"], "ns") is False
    assert await tenants.tenant_for_token(store, token) is None and await tenants.ids(store) == []


async def test_a_tenant_over_its_event_rate_is_refused_with_the_wait_and_nothing_stored(store: aioredis.Redis) -> None:
    tenant_id, other = new_id(), new_id()
    # 2 a second, bursts to 20: the 21st at once is refused.
    for n in range(20):
        await events.append(store, "E", tenant_id, None, {"n": n}, max_len=100, per_s=2)
    with pytest.raises(QuotaExceeded) as refused:
        await events.append(store, "E", tenant_id, None, {"n": 20}, max_len=100, per_s=2)
    assert str(refused.value) == "quota exceeded: events_per_s (limit 2)"
    assert 0 < refused.value.retry_after_s <= 0.5
    assert await store.xlen(keys.events(tenant_id)) == 20
    await events.append(store, "E", other, None, {}, max_len=100, per_s=2)  # another tenant's bucket is its own
    await asyncio.sleep(refused.value.retry_after_s + 0.05)
    await events.append(store, "E", tenant_id, None, {"n": 20}, max_len=100, per_s=2)  # refilled at its rate
    assert await store.xlen(keys.events(tenant_id)) == 21
