"""Tenant event log: one Redis stream per tenant, `events:{tenant_id}` (contract)."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from store import keys
from store.records import now_rfc3339

MAX_EVENTS_PER_TENANT = 100_000


# Names the platform itself emits; tenants cannot publish them.
RESERVED_PREFIXES = ("SCHEDULE_", "WORKSPACE_", "CHANNEL_")


def entry(event: str, tenant_id: str, workspace_id: str | None, payload: Any) -> dict[str, str]:
    """Stream entry fields; the stream id becomes the event's `id`."""
    return {
        "event": event,
        "tenant_id": tenant_id,
        "workspace_id": workspace_id or "",
        "timestamp": now_rfc3339(),
        "payload": json.dumps(payload, separators=(",", ":")),
    }


async def append(
    redis: aioredis.Redis,
    event: str,
    tenant_id: str,
    workspace_id: str | None,
    payload: Any,
    *,
    max_len: int = MAX_EVENTS_PER_TENANT,
) -> str:
    """Append one event; the stream is capped near `max_len` (the oldest are dropped)."""
    stream_id = await redis.xadd(
        keys.events(tenant_id), entry(event, tenant_id, workspace_id, payload), maxlen=max_len, approximate=True
    )
    return stream_id.decode()
