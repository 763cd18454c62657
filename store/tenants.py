"""Tenants and their API tokens (stored as SHA-256 digests, shown once)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import redis.asyncio as aioredis

from store import keys
from store.records import is_id, new_id, now_rfc3339


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
