"""Tenants and their API tokens (stored as SHA-256 digests, shown once).

A token is found by its digest in `tenant_token:{sha256}`, a key of its own slot, and
confirmed by the tenant's hash, which holds the digest of its one valid token: the hash is
the truth, so a token key left behind by a rotation or a delete (on a Redis Cluster the two
cannot share a transaction) opens nothing.
"""

from __future__ import annotations

import bisect
import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from store import channels, keys
from store.keys import ALL_SHARDS, shard_of
from store.records import decode_lenient, field, is_id, new_id, now_rfc3339, read_hashes, union


def token_digest(token: str) -> str:
    # Tokens are 256-bit random values, so a plain SHA-256 is enough to make a stolen
    # database useless without making every request pay for a slow hash.
    return hashlib.sha256(token.encode()).hexdigest()


async def create_tenant(redis: aioredis.Redis, name: str) -> dict[str, Any]:
    """Create a tenant; the returned dict holds the only copy of its token."""
    tenant_id = new_id()
    token = secrets.token_urlsafe(32)
    record = {"id": tenant_id, "name": name, "created_at": now_rfc3339()}
    # The token's key first: it opens nothing until the tenant's hash names its digest.
    await redis.set(keys.tenant_token(token_digest(token)), tenant_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.tenant(tenant_id), mapping={**record, "token_sha256": token_digest(token)})
        pipe.sadd(keys.tenants(shard_of(tenant_id)), tenant_id)
        await pipe.execute()
    return {**record, "token": token}


async def tenant_for_token(redis: aioredis.Redis, token: str) -> str | None:
    """The tenant whose valid token this is, or None."""
    digest = token_digest(token)
    tenant_id = await claimed_tenant(redis, digest)
    if tenant_id is None:
        return None
    return tenant_id if await redis.hget(keys.tenant(tenant_id), "token_sha256") == digest.encode() else None


async def claimed_tenant(redis: aioredis.Redis, digest: str) -> str | None:
    """The tenant a token's digest is filed under, not yet confirmed by the tenant's own record
    (`tenant_for_token` confirms it; a WebSocket's admission script does, in store.connections)."""
    raw = await redis.get(keys.tenant_token(digest))
    return None if raw is None else raw.decode()


async def index_existing(redis: aioredis.Redis) -> int:
    """Add tenants stored before the tenants index existed to it; returns how many were added."""
    found: list[str] = []
    async for raw in redis.scan_iter(match="tenant:*", count=1000, _type="HASH"):
        key = raw.decode()
        tenant_id = key.rpartition(":")[2]
        if is_id(tenant_id) and key == keys.tenant(tenant_id):
            found.append(tenant_id)
    added = 0
    for tenant_id in found:
        added += await redis.sadd(keys.tenants(shard_of(tenant_id)), tenant_id)
    return added


async def ids(redis: aioredis.Redis, shards: Sequence[int] = ALL_SHARDS) -> list[str]:
    """Every tenant's id in `shards`, sorted."""
    return await union(redis, keys.tenants, shards)


def public(fields: dict[str, str]) -> dict[str, Any]:
    """A tenant as operators see it: never its token, nor the token's digest."""
    return {"id": fields.get("id", ""), "name": fields.get("name", ""), "created_at": fields.get("created_at", "")}


async def get(redis: aioredis.Redis, tenant_id: str) -> dict[str, Any] | None:
    fields = decode_lenient(await redis.hgetall(keys.tenant(tenant_id)))
    return public(fields) if fields else None


async def usage(redis: aioredis.Redis, tenant_id: str) -> dict[str, int]:
    """What the tenant holds now, in the quotas' names (and its stream's length in events and bytes)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.scard(keys.tenant_workspaces(tenant_id))
        pipe.scard(keys.tenant_schedules(tenant_id))
        pipe.scard(keys.tenant_channels(tenant_id))
        pipe.xlen(keys.events(tenant_id))
        pipe.hget(keys.events_size(tenant_id), "bytes")
        found = await pipe.execute(raise_on_error=False)
    names = ("workspaces", "schedules", "channels", "events", "events_bytes")
    return {name: _count(value) for name, value in zip(names, found, strict=True)}


def _count(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


async def list_all(
    redis: aioredis.Redis, *, after: str | None = None, limit: int = 100
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the tenants, by id, and the next page's cursor (None on the last)."""
    tenant_ids = await ids(redis)
    start = bisect.bisect_right(tenant_ids, after) if after is not None else 0
    page = tenant_ids[start : start + limit]
    found = await read_hashes(redis, [keys.tenant(t) for t in page])
    listed = [public(decode_lenient(raw)) for raw in found if isinstance(raw, dict) and raw]
    return listed, page[-1] if start + limit < len(tenant_ids) and page else None


async def rotate_token(redis: aioredis.Redis, tenant_id: str) -> str | None:
    """A new token for the tenant (the only copy); the old one stops working in the same transaction.

    None if there is no such tenant.
    """
    key = keys.tenant(tenant_id)
    token = secrets.token_urlsafe(32)
    digest = token_digest(token)
    if not await redis.exists(key):
        return None
    # The new key first (it opens nothing until the hash names it), the old one last.
    await redis.set(keys.tenant_token(digest), tenant_id)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                old = await pipe.hget(key, "token_sha256")
                if old is None:
                    break
                pipe.multi()
                pipe.hset(key, "token_sha256", digest)
                await pipe.execute()
                await redis.delete(keys.tenant_token(old.decode()))
                return token
            except WatchError:
                continue
    await redis.delete(keys.tenant_token(digest))
    return None


async def delete(redis: aioredis.Redis, tenant_id: str, namespace: str) -> bool:
    """Remove the tenant and everything of it: token, workspaces, schedules, channels, event stream, and
    its entries in every index (and in the broadcaster positions of `namespace`). False if there is none.

    The tenant's hash goes first, in a transaction of its own, so its token opens nothing
    and nothing the tenant sends can land while the rest goes; the rest of its shard is one
    transaction, then its token key and its bots' bindings. Nothing of another tenant is
    touched.
    """
    key = keys.tenant(tenant_id)
    shard = shard_of(tenant_id)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                digest = await pipe.hget(key, "token_sha256")
                if (
                    digest is None and await pipe.type(key) == b"none"
                ):  # (a Cluster pipeline's EXISTS cannot be awaited)
                    return False
                pipe.multi()
                pipe.delete(key)
                pipe.srem(keys.tenants(shard), tenant_id)
                await pipe.execute()
                break
            except WatchError:
                continue
    if digest is not None:
        await redis.delete(keys.tenant_token(digest.decode()))
    workspace_ids = [m.decode() for m in await redis.smembers(keys.tenant_workspaces(tenant_id))]
    schedule_ids = {m.decode() for m in await redis.smembers(keys.tenant_schedules(tenant_id))}
    channel_ids = [m.decode() for m in await redis.smembers(keys.tenant_channels(tenant_id))]
    leases = {
        inflight: [m for m in await redis.zrange(inflight, 0, -1) if m.decode().split(":")[0] in schedule_ids]
        for inflight in {keys.schedules_inflight(shard_of(s)) for s in schedule_ids}
    }
    channel_raws = await read_hashes(redis, [keys.channel(c) for c in channel_ids])
    bots = {c: field(raw, "bot_id") for c, raw in zip(channel_ids, channel_raws, strict=True) if isinstance(raw, dict)}
    seen = [k for c in channel_ids async for k in redis.scan_iter(match=f"{keys.channel(c)}:seen:*", count=1000)]
    async with redis.pipeline(transaction=True) as pipe:
        for workspace_id in workspace_ids:
            pipe.delete(keys.workspace(workspace_id), keys.workspace_alive(workspace_id))
            pipe.delete(keys.workspace_restart_debounce(workspace_id))
            own = shard_of(workspace_id)
            pipe.srem(keys.workspaces_online(own), workspace_id)
            pipe.hdel(keys.workspaces_probe_failures(own), workspace_id)
            pipe.zrem(keys.workspaces_deadlines(own), workspace_id)
            pipe.zrem(keys.workspaces_restarts(own), workspace_id)
        for schedule_id in schedule_ids:
            pipe.delete(keys.schedule(schedule_id))
            pipe.srem(keys.schedules_quarantined(shard_of(schedule_id)), schedule_id)
        for inflight, members in leases.items():
            if members:
                pipe.zrem(inflight, *members)
        for channel_id in channel_ids:
            pipe.delete(keys.channel(channel_id), keys.channel_inbox(channel_id), keys.channel_offset(channel_id))
            pipe.srem(keys.channels(shard_of(channel_id)), channel_id)
        if seen:
            pipe.delete(*seen)
        pipe.zrem(keys.schedules_due_tenants(shard), tenant_id)
        pipe.delete(
            keys.tenant_due(tenant_id),
            keys.tenant_event_rate(tenant_id),
            keys.tenant_ws_connections(tenant_id),
            keys.events_size(tenant_id),
            keys.events(tenant_id),
            keys.tenant_workspaces(tenant_id),
            keys.tenant_schedules(tenant_id),
            keys.tenant_channels(tenant_id),
        )
        pipe.hdel(keys.broadcaster_positions(shard, namespace), tenant_id)
        await pipe.execute()
    for channel_id, bot in bots.items():
        if bot:
            await channels.release_bot(redis, bot, channel_id)
    return True
