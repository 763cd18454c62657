"""Tenants and their API tokens (stored as SHA-256 digests, shown once)."""

from __future__ import annotations

import bisect
import hashlib
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from store import keys
from store.records import decode_lenient, is_id, new_id, now_rfc3339, read_hashes


def token_digest(token: str) -> str:
    # Tokens are 256-bit random values, so a plain SHA-256 is enough to make a stolen
    # database useless without making every request pay for a slow hash.
    return hashlib.sha256(token.encode()).hexdigest()


async def create_tenant(redis: aioredis.Redis, name: str) -> dict[str, Any]:
    """Create a tenant; the returned dict holds the only copy of its token."""
    tenant_id = new_id()
    token = secrets.token_urlsafe(32)
    record = {"id": tenant_id, "name": name, "created_at": now_rfc3339()}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.tenant(tenant_id), mapping={**record, "token_sha256": token_digest(token)})
        pipe.set(keys.tenant_token(token_digest(token)), tenant_id)
        pipe.sadd(keys.TENANTS, tenant_id)
        await pipe.execute()
    return {**record, "token": token}


async def tenant_for_token(redis: aioredis.Redis, token: str) -> str | None:
    raw = await redis.get(keys.tenant_token(token_digest(token)))
    return raw.decode() if raw is not None else None


async def index_existing(redis: aioredis.Redis) -> int:
    """Add tenants stored before the `tenants` index existed to it; returns how many were added."""
    found: list[str] = []
    async for raw in redis.scan_iter(match="tenant:*", count=1000, _type="HASH"):
        tenant_id = raw.decode().removeprefix("tenant:")
        if is_id(tenant_id):
            found.append(tenant_id)
    return await redis.sadd(keys.TENANTS, *found) if found else 0


async def ids(redis: aioredis.Redis) -> list[str]:
    """Every tenant's id, sorted."""
    return sorted(member.decode() for member in await redis.smembers(keys.TENANTS))


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
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                old = await pipe.hget(key, "token_sha256")
                if old is None:
                    return None
                pipe.multi()
                pipe.delete(keys.tenant_token(old.decode()))
                pipe.set(keys.tenant_token(token_digest(token)), tenant_id)
                pipe.hset(key, "token_sha256", token_digest(token))
                await pipe.execute()
                return token
            except WatchError:
                continue


async def delete(redis: aioredis.Redis, tenant_id: str, namespace: str) -> bool:
    """Remove the tenant and everything of it: token, workspaces, schedules, channels, event stream, and
    its entries in every index (and in the broadcaster positions of `namespace`). False if there is none.

    Its token goes first, in a transaction of its own, so nothing the tenant sends can land
    while the rest goes; the rest is one transaction. Nothing of another tenant is touched.
    """
    key = keys.tenant(tenant_id)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                digest = await pipe.hget(key, "token_sha256")
                if digest is None and not await pipe.exists(key):
                    return False
                pipe.multi()
                if digest is not None:
                    pipe.delete(keys.tenant_token(digest.decode()))
                pipe.delete(key)
                pipe.srem(keys.TENANTS, tenant_id)
                await pipe.execute()
                break
            except WatchError:
                continue
    workspace_ids = [m.decode() for m in await redis.smembers(keys.tenant_workspaces(tenant_id))]
    schedule_ids = {m.decode() for m in await redis.smembers(keys.tenant_schedules(tenant_id))}
    channel_ids = [m.decode() for m in await redis.smembers(keys.tenant_channels(tenant_id))]
    leases = [m for m in await redis.zrange(keys.SCHEDULES_INFLIGHT, 0, -1) if m.decode().split(":")[0] in schedule_ids]
    bots = {b: c.decode() for b, c in (await redis.hgetall(keys.TELEGRAM_BOTS)).items() if c.decode() in channel_ids}
    seen = [k for c in channel_ids async for k in redis.scan_iter(match=f"{keys.channel(c)}:seen:*", count=1000)]
    async with redis.pipeline(transaction=True) as pipe:
        for workspace_id in workspace_ids:
            pipe.delete(keys.workspace(workspace_id), keys.workspace_alive(workspace_id))
            pipe.delete(keys.workspace_restart_debounce(workspace_id))
            pipe.srem(keys.WORKSPACES_ONLINE, workspace_id)
            pipe.hdel(keys.WORKSPACES_PROBE_FAILURES, workspace_id)
            pipe.zrem(keys.WORKSPACES_DEADLINES, workspace_id)
            pipe.zrem(keys.WORKSPACES_RESTARTS, workspace_id)
        for schedule_id in schedule_ids:
            pipe.delete(keys.schedule(schedule_id))
            pipe.srem(keys.SCHEDULES_QUARANTINED, schedule_id)
        if leases:
            pipe.zrem(keys.SCHEDULES_INFLIGHT, *leases)
        for channel_id in channel_ids:
            pipe.delete(keys.channel(channel_id), keys.channel_inbox(channel_id), keys.channel_offset(channel_id))
            pipe.srem(keys.CHANNELS, channel_id)
        if bots:
            pipe.hdel(keys.TELEGRAM_BOTS, *bots)
        if seen:
            pipe.delete(*seen)
        pipe.zrem(keys.SCHEDULES_DUE_TENANTS, tenant_id)
        pipe.delete(
            keys.tenant_due(tenant_id),
            keys.tenant_event_rate(tenant_id),
            keys.events_size(tenant_id),
            keys.events(tenant_id),
            keys.tenant_workspaces(tenant_id),
            keys.tenant_schedules(tenant_id),
            keys.tenant_channels(tenant_id),
        )
        pipe.hdel(keys.broadcaster_positions(namespace), tenant_id)
        await pipe.execute()
    return True
