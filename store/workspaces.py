"""Workspaces: a tenant's agents, with their A2A endpoint and liveness key."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from store import keys
from store.records import list_owned, new_id, now_rfc3339, optional, read_owned, to_hash

A2A_VERSIONS = ("1.0", "0.3")


def public(fields: dict[str, str]) -> dict[str, Any]:
    """A workspace hash as the API shows it."""
    return {
        "id": fields["id"],
        "name": fields["name"],
        "url": fields["url"],
        "a2a_version": fields["a2a_version"],
        "restart_url": optional(fields.get("restart_url", "")),
        "created_at": fields["created_at"],
        "last_heartbeat_at": optional(fields.get("last_heartbeat_at", "")),
    }


async def create(redis: aioredis.Redis, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
    workspace_id = new_id()
    fields = to_hash({"id": workspace_id, "tenant_id": tenant_id, "created_at": now_rfc3339(), **body})
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.workspace(workspace_id), mapping=fields)
        pipe.sadd(keys.tenant_workspaces(tenant_id), workspace_id)
        await pipe.execute()
    return public(fields)


async def get(redis: aioredis.Redis, tenant_id: str, workspace_id: str) -> dict[str, str] | None:
    """The workspace's fields if it exists and belongs to the tenant."""
    return await read_owned(redis, keys.workspace(workspace_id), tenant_id)


async def list_for(redis: aioredis.Redis, tenant_id: str) -> list[dict[str, Any]]:
    return await list_owned(redis, keys.tenant_workspaces(tenant_id), keys.workspace, tenant_id, public)


async def delete(redis: aioredis.Redis, tenant_id: str, workspace_id: str) -> bool:
    if await get(redis, tenant_id, workspace_id) is None:
        return False
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.workspace(workspace_id), keys.workspace_alive(workspace_id))
        pipe.srem(keys.tenant_workspaces(tenant_id), workspace_id)
        await pipe.execute()
    return True


async def heartbeat(redis: aioredis.Redis, workspace_id: str, ttl_s: float) -> None:
    """Set (not only extend) the liveness key with its TTL and record the time."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.workspace_alive(workspace_id), "1", px=int(ttl_s * 1000))
        pipe.hset(keys.workspace(workspace_id), "last_heartbeat_at", now_rfc3339(time.time()))
        await pipe.execute()
