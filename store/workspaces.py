"""Workspaces: a tenant's agents, with their A2A endpoint and liveness key."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from store import client, events, keys
from store.keys import ALL_SHARDS, shard_of
from store.quotas import create_within
from store.records import (
    decode_lenient,
    earliest,
    is_id,
    list_owned,
    new_id,
    now_rfc3339,
    optional,
    read_hashes,
    read_owned,
    to_hash,
    union,
)
from store.scripts import Lua
from store.secrets import SecretBox

A2A_VERSIONS = ("1.0", "0.3")
ONLINE, OFFLINE, UNKNOWN = "online", "offline", "unknown"

# KEYS: workspace hash, liveness key, online set, events stream, deadlines, the stream's size key. ARGV: id, ttl ms,
# now, stream maxlen, the key's expiry (unix seconds), then the WORKSPACE_ONLINE event's
# field/value pairs (store.events.entry). Sets the liveness key and its deadline; the
# transition to online happens once and emits one event.
_HEARTBEAT = Lua(
    events.APPEND_FN
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'last_heartbeat_at', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
if redis.call('HGET', KEYS[1], 'status') == 'online' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'online', 'online_at', ARGV[3])
append_event(KEYS[4], KEYS[6], tonumber(ARGV[4]), 6)
return 1
"""
)

# KEYS: workspace hash, liveness key, online set, restart queue, events stream, deadlines,
# the stream's size key. ARGV: id,
# tenant id, now, now unix seconds, stream maxlen, "1" if the liveness key must be gone,
# then the WORKSPACE_OFFLINE event's field/value pairs. A compare-and-set: only an online
# workspace goes offline, so each transition happens once, emits one event and queues one
# restart request, however many watchers see it.
_MARK_OFFLINE = Lua(
    events.APPEND_FN
    + """
if redis.call('HGET', KEYS[1], 'tenant_id') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'status') ~= 'online' then
  redis.call('SREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[6], ARGV[1])
  return 0
end
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'offline', 'offline_at', ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZADD', KEYS[4], 'NX', ARGV[4], ARGV[1])
append_event(KEYS[5], KEYS[7], tonumber(ARGV[5]), 7)
return 1
"""
)


EDITABLE = ("name", "url", "a2a_version", "restart_url", "auth_token")


def public(fields: dict[str, str]) -> dict[str, Any]:
    """A workspace hash as the API shows it: its bearer token never, only whether it has one."""
    return {
        "id": fields.get("id", ""),
        "name": fields.get("name", ""),
        "url": fields.get("url", ""),
        "a2a_version": fields.get("a2a_version", ""),
        "restart_url": optional(fields.get("restart_url", "")),
        "auth_token": "redacted" if fields.get("auth_token") else None,
        "created_at": fields.get("created_at", ""),
        "last_heartbeat_at": optional(fields.get("last_heartbeat_at", "")),
        "status": fields.get("status") or UNKNOWN,
    }


def _sealed(box: SecretBox, changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` with a plaintext auth_token sealed (None or "" clears it)."""
    if changes.get("auth_token"):
        return {**changes, "auth_token": box.seal_text(changes["auth_token"])}
    return changes


async def create(
    redis: aioredis.Redis, box: SecretBox, tenant_id: str, body: dict[str, Any], *, limit: float | None = None
) -> dict[str, Any]:
    """Store a workspace validated by the caller; its auth_token, if any, sealed with `box`.

    QuotaExceeded (nothing stored) if the tenant has `limit` workspaces already.
    """
    workspace_id = new_id(shard_of(tenant_id))
    record = {"id": workspace_id, "tenant_id": tenant_id, "created_at": now_rfc3339(), **_sealed(box, body)}
    fields = to_hash(record)

    async def write(pipe: Any) -> None:
        pipe.hset(keys.workspace(workspace_id), mapping=fields)
        pipe.sadd(keys.tenant_workspaces(tenant_id), workspace_id)

    await create_within(redis, keys.tenant_workspaces(tenant_id), limit, "workspaces", write)
    return public(fields)


async def patch(
    redis: aioredis.Redis, box: SecretBox, tenant_id: str, workspace_id: str, changes: dict[str, Any]
) -> dict[str, Any] | None:
    """Apply validated changes atomically (never recreating a workspace deleted meanwhile); None if it is
    gone or not the tenant's."""
    key = keys.workspace(workspace_id)
    updates = to_hash(_sealed(box, changes))
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                fields = decode_lenient(await pipe.hgetall(key))
                if fields.get("tenant_id") != tenant_id:
                    return None
                pipe.multi()
                pipe.hset(key, mapping=updates)
                await pipe.execute()
                return public({**fields, **updates})
            except WatchError:
                continue


async def get(redis: aioredis.Redis, tenant_id: str, workspace_id: str) -> dict[str, str] | None:
    """The workspace's fields if it exists and belongs to the tenant."""
    return await read_owned(redis, keys.workspace(workspace_id), tenant_id)


async def list_for(
    redis: aioredis.Redis, tenant_id: str, *, after: str | None = None, limit: int = 100
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the tenant's workspaces, by id, and the next page's cursor (see records.list_owned)."""
    index = keys.tenant_workspaces(tenant_id)
    return await list_owned(redis, index, keys.workspace, tenant_id, public, after=after, limit=limit)


async def delete(redis: aioredis.Redis, tenant_id: str, workspace_id: str) -> bool:
    if await get(redis, tenant_id, workspace_id) is None:
        return False
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.workspace(workspace_id), keys.workspace_alive(workspace_id))
        pipe.srem(keys.tenant_workspaces(tenant_id), workspace_id)
        pipe.srem(keys.workspaces_online(shard_of(workspace_id)), workspace_id)
        pipe.zrem(keys.workspaces_deadlines(shard_of(workspace_id)), workspace_id)
        await pipe.execute()
    return True


async def heartbeat(redis: aioredis.Redis, tenant_id: str, workspace_id: str, ttl_s: float, max_len: int) -> bool:
    """Set (not only extend) the liveness key; returns whether the workspace came online with it."""
    entry = events.entry("WORKSPACE_ONLINE", tenant_id, workspace_id, {"workspace_id": workspace_id})
    now = time.time()
    heartbeat_keys = [
        keys.workspace(workspace_id),
        keys.workspace_alive(workspace_id),
        keys.workspaces_online(shard_of(workspace_id)),
        keys.events(tenant_id),
        keys.workspaces_deadlines(shard_of(workspace_id)),
        keys.events_size(tenant_id),
    ]
    args = [workspace_id, int(ttl_s * 1000), now_rfc3339(now), max_len, now + ttl_s, *events.flat(entry)]
    return await _HEARTBEAT(redis, heartbeat_keys, args) == 1


async def mark_offline(
    redis: aioredis.Redis,
    workspace_id: str,
    raw: dict[bytes, bytes],
    reason: str,
    *,
    max_len: int,
    require_expired: bool,
) -> bool:
    """Take an online workspace (read as `raw`) offline, once, whoever notices first.

    One compare-and-set (_MARK_OFFLINE): the WORKSPACE_OFFLINE event and the restart
    request are queued with it. With `require_expired`, only if its liveness key is gone.
    Raises ValueError if the record is corrupt; returns whether this call made the change.
    """
    if not raw:
        return False  # deleted meanwhile
    tenant_id = checked(workspace_id, raw)["tenant_id"]
    entry = events.entry("WORKSPACE_OFFLINE", tenant_id, workspace_id, {"workspace_id": workspace_id, "reason": reason})
    now = time.time()
    offline_keys = [
        keys.workspace(workspace_id),
        keys.workspace_alive(workspace_id),
        keys.workspaces_online(shard_of(workspace_id)),
        keys.workspaces_restarts(shard_of(workspace_id)),
        keys.events(tenant_id),
        keys.workspaces_deadlines(shard_of(workspace_id)),
        keys.events_size(tenant_id),
    ]
    args = [workspace_id, tenant_id, now_rfc3339(now), int(now), max_len, int(require_expired), *events.flat(entry)]
    return bool(await _MARK_OFFLINE(redis, offline_keys, args))


class OnlineScan:
    """The reconciliation scan: online workspaces of `shards` whose liveness key is gone, in batches of `batch`."""

    def __init__(self, redis: aioredis.Redis, batch: int = 1000, shards: Sequence[int] = ALL_SHARDS) -> None:
        self.redis = redis
        self.batch = batch
        self.shards = shards
        self.watched = 0

    async def expired(self) -> AsyncIterator[str]:
        ids: list[str] = []
        for shard in self.shards:
            async for raw in self.redis.sscan_iter(keys.workspaces_online(shard), count=self.batch):
                ids.append(raw.decode())
                if len(ids) >= self.batch:
                    for workspace_id in await self._gone(ids):
                        yield workspace_id
                    ids = []
        for workspace_id in await self._gone(ids):
            yield workspace_id

    async def _gone(self, ids: list[str]) -> list[str]:
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for workspace_id in ids:
                pipe.exists(keys.workspace_alive(workspace_id))
            alive = await pipe.execute()
        self.watched += len(ids)
        return [w for w, present in zip(ids, alive, strict=True) if not present]


async def due(redis: aioredis.Redis, now: float, limit: int = 1000, shards: Sequence[int] = ALL_SHARDS) -> list[str]:
    """Online workspaces of `shards` whose liveness key's deadline has passed (their key has expired or is
    about to), the earliest first."""
    return await earliest(redis, keys.workspaces_deadlines, now, limit, shards)


def checked(workspace_id: str, raw: dict[bytes, bytes]) -> dict[str, str]:
    """A stored workspace's fields; raises ValueError if they are corrupt (bad UTF-8, tenant or url)."""
    fields = {k.decode(): v.decode() for k, v in raw.items()}  # UnicodeDecodeError is a ValueError
    if not is_id(fields.get("tenant_id", "")):
        raise ValueError(f"workspace {workspace_id} has no valid tenant_id")
    for name in ("url", "restart_url"):
        value = fields.get(name, "")
        if (name == "url" or value) and not _http_url(value):
            raise ValueError(f"workspace {workspace_id} has an invalid {name}: {value[:100]!r}")
    return fields


@dataclass(frozen=True)
class Target:
    """What the platform needs to send a workspace a request: where, in which A2A version, with what token."""

    tenant_id: str
    url: str
    a2a_version: str
    restart_url: str | None
    auth_token: str | None = field(repr=False)


def target(workspace_id: str, raw: dict[bytes, bytes], box: SecretBox) -> Target:
    """The workspace as requests go to it; ValueError if its record is corrupt (or its token cannot be opened)."""
    fields = checked(workspace_id, raw)
    if fields.get("a2a_version") not in A2A_VERSIONS:
        raise ValueError(f"workspace {workspace_id} has a corrupt a2a_version")
    sealed = fields.get("auth_token", "")
    return Target(
        tenant_id=fields["tenant_id"],
        url=fields["url"],
        a2a_version=fields["a2a_version"],
        restart_url=fields.get("restart_url") or None,
        auth_token=box.open_text(sealed) if sealed else None,
    )


def _http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def version(raw: dict[bytes, bytes]) -> str:
    """A stored workspace as a comparable value: it changes when any field does."""
    return json.dumps(sorted(decode_lenient(raw).items()))


async def read(redis: aioredis.Redis, workspace_ids: Sequence[str]) -> list[Any]:
    """The stored hashes, in one round trip; a key of the wrong type reads as its error (an Exception)."""
    return await read_hashes(redis, [keys.workspace(i) for i in workspace_ids])


async def probe_failed(redis: aioredis.Redis, workspace_id: str) -> int:
    """Count one more failed health probe in a row; returns the count (kept across restarts)."""
    return int(await redis.hincrby(keys.workspaces_probe_failures(shard_of(workspace_id)), workspace_id, 1))


async def probe_passed(redis: aioredis.Redis, workspace_id: str) -> None:
    """A probe answered: the count of failures in a row starts again."""
    await redis.hdel(keys.workspaces_probe_failures(shard_of(workspace_id)), workspace_id)


async def forget_probe_failures(redis: aioredis.Redis, keep: set[str], shards: Sequence[int] = ALL_SHARDS) -> int:
    """Drop the counts of workspaces of `shards` not in `keep` (offline, deleted); how many went."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.hkeys(keys.workspaces_probe_failures(shard))
        found = await pipe.execute()
    gone = {
        shard: [w for w in (m.decode() for m in members) if w not in keep]
        for shard, members in zip(shards, found, strict=True)
    }
    if not any(gone.values()):
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for shard, ids in gone.items():
            if ids:
                pipe.hdel(keys.workspaces_probe_failures(shard), *ids)
        return sum(await pipe.execute())


async def probe_failures(redis: aioredis.Redis, shards: Sequence[int] = ALL_SHARDS) -> int:
    """How many workspaces of `shards` have failed their last probe (one or more in a row)."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.hlen(keys.workspaces_probe_failures(shard))
        return sum(await pipe.execute())


async def online(redis: aioredis.Redis, shards: Sequence[int] = ALL_SHARDS) -> list[str]:
    """Ids of the workspaces of `shards` whose status is online, sorted."""
    return await union(redis, keys.workspaces_online, shards)


async def expired(redis: aioredis.Redis) -> AsyncIterator[str]:
    """Ids of workspaces whose liveness key Redis expires, as it does (expired-key notifications).

    Redis sends no notification it missed while this was not subscribed, and a Redis Cluster
    sends each node's own only (this listens to every primary known at the start): the
    deadlines (`due`) and the reconciliation scan (OnlineScan) are what the monitor's
    correctness rests on; this only makes it quicker.
    """
    async for key in client.notifications(redis, "expired"):
        workspace_id = keys.alive_workspace(key)
        if workspace_id is not None and is_id(workspace_id):
            yield workspace_id


# -- restart requests, queued by the offline transition --------------------------------------


async def restarts_due(redis: aioredis.Redis, now: float, limit: int, shards: Sequence[int] = ALL_SHARDS) -> list[str]:
    """Up to `limit` workspaces of `shards` whose restart request is due, the earliest first."""
    return await earliest(redis, keys.workspaces_restarts, now, limit, shards)


async def debounce_restart(redis: aioredis.Redis, workspace_id: str, debounce_s: float) -> bool:
    """Whether a first restart request may go now: at most one per `debounce_s` per workspace.

    If not, the queued request is dropped.
    """
    debounce_ms = int(debounce_s * 1000)
    if await redis.set(keys.workspace_restart_debounce(workspace_id), "1", nx=True, px=debounce_ms):
        return True
    await drop_restart(redis, workspace_id)
    return False


async def drop_restart(redis: aioredis.Redis, workspace_id: str) -> None:
    await redis.zrem(keys.workspaces_restarts(shard_of(workspace_id)), workspace_id)


async def retry_restart(redis: aioredis.Redis, workspace_id: str, attempt: int, at: float) -> None:
    """Try the restart request again at `at`; `attempt` is recorded on the workspace."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.workspace(workspace_id), "restart_attempt", attempt)
        pipe.zadd(keys.workspaces_restarts(shard_of(workspace_id)), {workspace_id: at}, xx=True)
        await pipe.execute()


async def restart_requested(
    redis: aioredis.Redis, workspace_id: str, tenant_id: str, url: str | None, delivered: bool, *, max_len: int
) -> None:
    """The restart request is done (sent, given up, or nowhere to send): dequeue it, with its event."""
    payload = {"workspace_id": workspace_id, "restart_url": url, "delivered": delivered}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.workspace(workspace_id), "restart_attempt")
        pipe.zrem(keys.workspaces_restarts(shard_of(workspace_id)), workspace_id)
        entry = events.entry("WORKSPACE_RESTART_REQUESTED", tenant_id, workspace_id, payload)
        await events.append_in(redis, pipe, tenant_id, entry, max_len)
        await pipe.execute()
