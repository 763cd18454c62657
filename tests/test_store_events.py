"""store.events, store.broadcast, store.tenants and store.health against a real Redis."""

from __future__ import annotations

import asyncio
import json
import time

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
    assert await events.counts(store, [a, b, empty]) == {a: (3, 3), b: (1, 1), empty: (0, 0)}
    read = dict(await events.read_new(store, {a: ids[1], b: heads[b], empty: "0-0"}, count=10, block_ms=10))
    assert list(read) == [a] and [e[0].decode() for e in read[a]] == [ids[2]]
    assert await events.read_new(store, {}, count=10, block_ms=10) == []


async def test_a_read_of_no_stream_blocks_like_xread(store: aioredis.Redis) -> None:
    """No tenant yet: the broadcaster's loop must wait, not spin (it once called the API nonstop)."""
    started = time.monotonic()
    assert await events.read_new(store, {}, count=10, block_ms=200) == []
    assert time.monotonic() - started >= 0.2


async def test_a_key_that_is_no_stream_is_found_by_its_kind(store: aioredis.Redis) -> None:
    good, bad, empty = new_id(), new_id(), new_id()
    await events.append(store, "E", good, None, {}, max_len=10, per_s=100)
    await store.set(keys.events(bad), "not a stream")
    reader = events.StreamReader(store)
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        # On a Cluster each shard is read apart, and the good one's reads may come back first
        # for a while (the bad one's node may still be connecting): read until the error, or
        # give up after 10 s so a reader that swallows it fails the test.
        deadline = asyncio.get_running_loop().time() + 10
        while asyncio.get_running_loop().time() < deadline:
            await reader.read({good: "0-0", bad: "0-0"}, count=10, block_ms=10)
    reader.cancel()
    assert await events.kinds(store, [good, bad, empty]) == {good: "stream", bad: "string", empty: "none"}
    assert (await events.heads(store, [bad]))[bad] == "0-0"


async def test_broadcast_positions_mark_the_deployment_started(store: aioredis.Redis) -> None:
    assert await broadcast.load(store, "ns") is None and not await broadcast.started(store, "ns")
    await broadcast.start(store, "ns", {})
    assert await broadcast.started(store, "ns") and await broadcast.load(store, "ns") == {}
    for tenant_id in ("t1", "t2"):
        await store.sadd(keys.tenants(keys.shard_of(tenant_id)), tenant_id)
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


def stream_bytes(entries: list) -> int:
    return sum(len(k) + len(v) for _, fields in entries for k, v in fields.items())


async def test_a_stream_is_bounded_in_entries_and_its_size_is_kept_exactly(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    for n in range(30):
        await events.append(store, "E", tenant_id, None, {"n": n, "pad": "x" * n}, max_len=10, per_s=1000)
    entries = await store.xrange(keys.events(tenant_id))
    assert [json.loads(f[b"payload"])["n"] for _, f in entries] == list(range(20, 30))  # exactly the newest 10
    size = await store.hgetall(keys.events_size(tenant_id))
    assert (int(size[b"bytes"]), int(size[b"added"])) == (stream_bytes(entries), 30)


async def test_a_stream_is_bounded_in_bytes_whatever_its_entries_cap(store: aioredis.Redis) -> None:
    """1,700 events of 64 KiB (106 MiB) into a stream allowed 100,000 entries: the oldest go."""
    tenant_id = new_id()
    payload = "x" * (64 * 1024 - 16)
    for start in range(0, 1700, 100):
        async with store.pipeline(transaction=False) as pipe:
            for n in range(start, start + 100):
                fields = events.entry("BIG", tenant_id, None, {"n": n, "pad": payload})
                await events.append_in(store, pipe, tenant_id, fields, 100_000)
            await pipe.execute()
    entries = await store.xrange(keys.events(tenant_id))
    held = stream_bytes(entries)
    assert events.MAX_STREAM_BYTES - 70 * 1024 < held <= events.MAX_STREAM_BYTES
    assert int(await store.hget(keys.events_size(tenant_id), "bytes")) == held
    numbers = [json.loads(f[b"payload"])["n"] for _, f in entries]
    assert numbers == list(range(1700 - len(numbers), 1700))  # the newest kept, in order, no gap


async def test_a_replay_page_holds_about_its_budget_of_the_streams_mean_entry(store: aioredis.Redis) -> None:
    small, big, empty = new_id(), new_id(), new_id()
    for n in range(20):
        await events.append(store, "E", small, None, {"n": n}, max_len=100, per_s=1000)
        await events.append(store, "E", big, None, {"pad": "x" * 60_000}, max_len=100, per_s=1000)
    assert await events.page_size(store, small, 1024 * 1024, 500) == 500  # small entries: the entry cap
    assert await events.page_size(store, big, 1024 * 1024, 500) == 17  # 60 kB entries: 1 MiB of them
    assert await events.page_size(store, empty, 1024 * 1024, 500) == 500
