"""The key layout's version, and the move of a store written before the sharded layout (store.keys).

`prepare` runs once per deployment, before any actor starts: it checks that `REDIS_URL`
names the kind of server it is (a single Redis or a Redis Cluster), then moves a store of
layout 1 into layout 2 and records the version in `layout`. Layout 1 had no hash tags
(`tenant:{id}`, `schedule:{id}`, ...) and global indexes (`tenants`, `schedules:inflight`,
`channels:telegram_bots`, ...); it can only be on a single Redis, where keys of any slots
may meet, so the move renames keys and splits each global index into its shards, one key
per transaction. Every step is idempotent: a move cut short is finished by the next start.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from store import client, keys
from store.keys import shard_of
from store.scripts import Lua

VERSION = 2

# Layout 1's record keys: kind, id, and what follows the id (a sub-key, or nothing).
_RECORD = re.compile(r"(tenant|workspace|schedule|channel|events):([0-9a-f]{32})((?::.*)?)", re.DOTALL)
_RECORD_KEY: dict[str, Callable[[str], str]] = {
    "tenant": keys.tenant,
    "workspace": keys.workspace,
    "schedule": keys.schedule,
    "channel": keys.channel,
    "events": keys.events,
}


def _member_shard(member: bytes) -> int:
    """The shard of an index member: a record id, or "{schedule id}:{slot}" (in flight)."""
    return shard_of(member.decode(errors="replace").split(":")[0])


# Layout 1's global indexes: the per-shard key each member moves to (by the member's shard).
_SPLIT: dict[str, Callable[[int], str]] = {
    "tenants": keys.tenants,
    "channels": keys.channels,
    "workspaces:online": keys.workspaces_online,
    "workspaces:deadlines": keys.workspaces_deadlines,
    "workspaces:probe_failures": keys.workspaces_probe_failures,
    "workspaces:restarts": keys.workspaces_restarts,
    "schedules:due_tenants": keys.schedules_due_tenants,
    "schedules:inflight": keys.schedules_inflight,
    "schedules:quarantined": keys.schedules_quarantined,
}
_TELEGRAM_BOTS = "channels:telegram_bots"
_POSITIONS = re.compile(r"broadcaster:([^{}]*):positions")
_STARTED = b"_started_at"


class WrongServer(ValueError):
    """REDIS_URL names one kind of server and reaches the other."""


async def prepare(redis: aioredis.Redis, *, running: bool = False) -> int:
    """Check the server, move an older layout if there is one; returns how many keys were moved.

    `running`: the deployment's actors are up (a driver re-run). Then a store that still
    needs moving is refused (MoveWhileRunning): actors of the release before would go on
    writing the old names after the move.
    """
    await _check_server(redis)
    found = await redis.get(keys.LAYOUT)
    if found is not None and int(found) >= VERSION:
        return 0
    if client.is_cluster(redis):
        moved = 0
    else:
        if running and await _has_layout_1(redis):
            raise MoveWhileRunning(
                "the store holds keys of the layout before shards and this deployment is running: "
                "stop it first (python driver.py down), then start it again to move them"
            )
        moved = await _move_layout_1(redis)
    await redis.set(keys.LAYOUT, VERSION)
    return moved


class MoveWhileRunning(RuntimeError):
    """A store to move while the actors of the release before still use it."""


async def _has_layout_1(redis: aioredis.Redis) -> bool:
    async for raw in redis.scan_iter(count=1000):
        name = raw.decode(errors="replace")
        if _RECORD.fullmatch(name) or name in _SPLIT or name == _TELEGRAM_BOTS or _POSITIONS.fullmatch(name):
            return True
    return False


async def _check_server(redis: aioredis.Redis) -> None:
    if client.is_cluster(redis):
        return  # a cluster client refuses to start against a server that is not one
    try:
        info = await redis.info("cluster")
    except ResponseError:
        return  # a server that does not know the section is no cluster node
    if int(info.get("cluster_enabled", 0)):
        raise WrongServer(
            "REDIS_URL names a Redis Cluster node as a single Redis: write it as redis+cluster://host:port"
        )


async def _move_layout_1(redis: aioredis.Redis) -> int:
    moved = 0
    async for raw in redis.scan_iter(count=1000):
        name = raw.decode(errors="replace")
        if match := _RECORD.fullmatch(name):
            kind, record_id, rest = match.groups()
            moved += await _rename(redis, raw, _RECORD_KEY[kind](record_id) + rest)
        elif name in _SPLIT:
            moved += await _split(redis, raw, _SPLIT[name])
        elif name == _TELEGRAM_BOTS:
            moved += await _split_bots(redis, raw)
        elif match := _POSITIONS.fullmatch(name):
            moved += await _split_positions(redis, raw, match[1])
    return moved


# KEYS: old, new. RENAMENX unless the old key is gone (it expired since the scan saw it).
_RENAME = Lua("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('RENAMENX', KEYS[1], KEYS[2])
""")


async def _rename(redis: aioredis.Redis, old: bytes, new: str) -> int:
    """RENAME keeps the value and its TTL; a key already there (a move cut short) is kept, and one
    that expired meanwhile (a liveness key, a debounce) is skipped."""
    return int(await _RENAME(redis, [old.decode(errors="surrogateescape"), new]))


async def _split(redis: aioredis.Redis, old: bytes, index: Callable[[int], str]) -> int:
    """A set, sorted set or hash split by its members' shards, then deleted; in one transaction."""
    kind = (await redis.type(old)).decode()
    async with redis.pipeline(transaction=True) as pipe:
        if kind == "set":
            members: Any = await redis.smembers(old)
            for member in members:
                pipe.sadd(index(_member_shard(member)), member)
        elif kind == "zset":
            for member, score in await redis.zrange(old, 0, -1, withscores=True):
                pipe.zadd(index(_member_shard(member)), {member: score})
        elif kind == "hash":
            for member, value in (await redis.hgetall(old)).items():
                pipe.hset(index(_member_shard(member)), member, value)
        else:
            return 0  # not what layout 1 wrote there: left alone
        pipe.delete(old)
        await pipe.execute()
    return 1


async def _split_bots(redis: aioredis.Redis, old: bytes) -> int:
    now = int((await redis.time())[0])
    async with redis.pipeline(transaction=True) as pipe:
        for bot, channel_id in (await redis.hgetall(old)).items():
            pipe.hset(keys.telegram_bot(bot.decode()), mapping={"channel": channel_id, "at": now})
        pipe.delete(old)
        await pipe.execute()
    return 1


async def _split_positions(redis: aioredis.Redis, old: bytes, namespace: str) -> int:
    saved = await redis.hgetall(old)
    async with redis.pipeline(transaction=True) as pipe:
        for tenant_id, position in saved.items():
            if tenant_id != _STARTED:
                pipe.hset(keys.broadcaster_positions(shard_of(tenant_id.decode()), namespace), tenant_id, position)
        if _STARTED in saved:
            pipe.set(keys.broadcaster_started(namespace), saved[_STARTED])
        pipe.delete(old)
        await pipe.execute()
    return 1
