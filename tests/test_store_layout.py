"""store.layout: a store written in the layout before shards is moved whole, once; a wrong server is named."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from store import broadcast, channels, events, keys, layout, schedules, tenants, workspaces
from store.client import connect
from store.records import new_id
from tests.redis_cluster import LocalRedisCluster

# What layout 2 leaves: tagged keys, and the global keys used one at a time.
NEW_LAYOUT = re.compile(
    r"[a-z_]+:\{s\d+-\d+\}(:.+)?|tenant_token:[0-9a-f]{64}|telegram_bot:\d+|broadcaster:ns:started|layout"
)


async def write_layout_1(redis: aioredis.Redis) -> dict[str, str]:
    """A tenant with one of everything, as the release before shards wrote it (ids in any shard)."""
    t, w, s, q, c = (new_id() for _ in range(5))
    digest = tenants.token_digest("old-token")
    await redis.hset(f"tenant:{t}", mapping={"id": t, "name": "older", "created_at": "x", "token_sha256": digest})
    await redis.set(f"tenant_token:{digest}", t)
    await redis.sadd("tenants", t)
    await redis.sadd(f"tenant:{t}:workspaces", w)
    await redis.sadd(f"tenant:{t}:schedules", s, q)
    await redis.sadd(f"tenant:{t}:channels", c)
    await redis.zadd(f"tenant:{t}:due", {s: 1_000})
    await redis.hset(f"tenant:{t}:events_size", mapping={"bytes": 10, "added": 1})
    event_id = (await redis.xadd(f"events:{t}", events.entry("OLD", t, None, {}))).decode()
    workspace = {"id": w, "tenant_id": t, "name": "w", "url": "http://a.example", "a2a_version": "1.0"}
    await redis.hset(f"workspace:{w}", mapping={**workspace, "status": "online"})
    await redis.set(f"workspace:{w}:alive", "1", ex=600)
    await redis.sadd("workspaces:online", w)
    await redis.zadd("workspaces:deadlines", {w: 2_000})
    await redis.hset("workspaces:probe_failures", w, 2)
    await redis.zadd("workspaces:restarts", {w: 5})
    await redis.hset(f"schedule:{s}", mapping={"id": s, "tenant_id": t, "workspace_id": w, "cron": "* * * * *"})
    await redis.hset(f"schedule:{q}", mapping={"id": q, "tenant_id": t, "last_status": "quarantined"})
    await redis.zadd("schedules:due_tenants", {t: 1_000})
    await redis.zadd("schedules:inflight", {f"{s}:900": 5})
    await redis.sadd("schedules:quarantined", q)
    await redis.hset(f"channel:{c}", mapping={"id": c, "tenant_id": t, "bot_id": "4242", "status": "running"})
    inbox_id = (await redis.xadd(f"channel:{c}:inbox", {"chat_id": "1", "message_id": "2", "text": "hi"})).decode()
    await redis.set(f"channel:{c}:offset", 77)
    await redis.sadd("channels", c)
    await redis.hset("channels:telegram_bots", "4242", c)
    await redis.hset("broadcaster:ns:positions", mapping={"_started_at": "123.0", t: event_id})
    return {"t": t, "w": w, "s": s, "q": q, "c": c, "event": event_id, "inbox": inbox_id}


async def test_a_store_of_the_layout_before_shards_is_moved_whole_and_once(
    fresh_redis: Callable[[], str],
) -> None:
    redis = connect(fresh_redis())
    old = await write_layout_1(redis)
    t, w, s, q, c = old["t"], old["w"], old["s"], old["q"], old["c"]
    assert await layout.prepare(redis) > 0
    assert await redis.get(keys.LAYOUT) == b"2"
    assert [k async for k in redis.scan_iter() if not NEW_LAYOUT.fullmatch(k.decode())] == []
    # Every record and index is where the sharded layout looks for it.
    assert await tenants.ids(redis) == [t]
    assert await tenants.tenant_for_token(redis, "old-token") == t
    assert await tenants.usage(redis, t) == {
        "workspaces": 1,
        "schedules": 2,
        "channels": 1,
        "events": 1,
        "events_bytes": 10,
    }
    assert (await workspaces.get(redis, t, w) or {})["status"] == "online"
    assert 0 < await redis.ttl(keys.workspace_alive(w)) <= 600  # its TTL moved with it
    assert await workspaces.online(redis) == [w]
    assert await workspaces.due(redis, 3_000) == [w]
    assert await workspaces.probe_failures(redis) == 1
    assert await workspaces.restarts_due(redis, 10, 10) == [w]
    assert await schedules.due_tenants(redis, 2_000, 10) == [t]
    assert await schedules.due(redis, 2_000, {t: 10}) == {t: [(s, 1_000)]}
    assert await schedules.expired_leases(redis, 10, 10) == [schedules.Lease(s, 900, 5)]
    assert [item["key"] for item in await schedules.quarantined(redis)] == [q]
    assert await channels.ids(redis) == [c]
    assert await channels.bot_owners(redis, ["4242"]) == {"4242": c}
    assert await channels.offset(redis, c) == 77
    inbox = await channels.inbox_after(redis, {c: "0-0"}, 10)
    assert [entry_id.decode() for entry_id, _ in inbox[c]] == [old["inbox"]]
    assert await broadcast.load(redis, "ns") == {t: old["event"]} and await broadcast.started(redis, "ns")
    assert await events.head(redis, t) == old["event"]
    # Once moved, it is not moved again; and a tenant deleted now leaves nothing behind.
    assert await layout.prepare(redis) == 0
    assert await tenants.delete(redis, t, "ns") is True
    left = sorted([k.decode() async for k in redis.scan_iter()])
    assert left == [keys.broadcaster_started("ns"), keys.LAYOUT]
    await redis.aclose()


async def test_a_move_cut_short_is_finished_by_the_next_start(fresh_redis: Callable[[], str]) -> None:
    redis = connect(fresh_redis())
    old = await write_layout_1(redis)
    await redis.rename(f"schedule:{old['s']}", keys.schedule(old["s"]))  # the first key moved, then a crash
    await redis.sadd(keys.tenants(keys.shard_of(old["t"])), old["t"])  # a split half done
    assert await layout.prepare(redis) > 0
    assert (await schedules.read(redis, [old["s"]]))[0][b"cron"] == b"* * * * *"
    assert await tenants.ids(redis) == [old["t"]]
    await redis.aclose()


async def test_a_new_store_gets_the_layout_without_a_move(fresh_redis: Callable[[], str]) -> None:
    redis = connect(fresh_redis())
    assert await layout.prepare(redis) == 0
    assert await redis.get(keys.LAYOUT) == b"2"
    await redis.aclose()


async def test_a_cluster_node_named_as_a_single_redis_is_refused_naming_the_setting(
    redis_cluster: LocalRedisCluster,
) -> None:
    redis = connect(redis_cluster.node_urls[0])
    with pytest.raises(layout.WrongServer, match=r"REDIS_URL .* redis\+cluster://"):
        await layout.prepare(redis)
    await redis.aclose()
    cluster = connect(redis_cluster.url)
    assert await layout.prepare(cluster) == 0
    assert await cluster.get(keys.LAYOUT) == b"2"
    await cluster.aclose()


async def test_a_move_is_refused_while_the_deployment_runs_and_a_key_gone_meanwhile_is_skipped(
    fresh_redis: Callable[[], str],
) -> None:
    redis = connect(fresh_redis())
    old = await write_layout_1(redis)
    with pytest.raises(layout.MoveWhileRunning, match=r"driver\.py down"):
        await layout.prepare(redis, running=True)  # its actors would go on writing the old names
    assert await redis.exists(f"tenant:{old['t']}") and await redis.get(keys.LAYOUT) is None
    # A liveness key that expires between the scan and its rename is skipped, not an error.
    assert await layout._rename(redis, b"workspace:" + b"0" * 32 + b":alive", keys.workspace_alive("0" * 32)) == 0
    assert await layout.prepare(redis) > 0
    assert await layout.prepare(redis, running=True) == 0  # nothing to move: a running deployment is fine
    await redis.aclose()
