"""The broadcaster's positions: per tenant, the last stream id the API actor has taken."""

from __future__ import annotations

import time
from collections.abc import Mapping

import redis.asyncio as aioredis

from store import keys
from store.scripts import Lua

STARTED = "_started_at"  # field marking the positions hash as this deployment's


async def load(redis: aioredis.Redis, namespace: str) -> dict[str, str] | None:
    """The saved positions; None if this deployment has none yet (it never started, or Redis lost them)."""
    saved = await redis.hgetall(keys.broadcaster_positions(namespace))
    if not saved:
        return None
    return {k.decode(): v.decode() for k, v in saved.items() if k != STARTED.encode()}


async def start(redis: aioredis.Redis, namespace: str, positions: Mapping[str, str]) -> None:
    """Write the positions of a (re)started deployment; from now on WebSockets are admitted."""
    await redis.hset(keys.broadcaster_positions(namespace), mapping={STARTED: str(time.time()), **positions})


# KEYS: positions hash, tenants set. ARGV: tenant id, position, ... Only tenants that still exist:
# a tenant deleted while its last events were on the way leaves no position behind.
_SAVE = Lua("""
for i = 1, #ARGV, 2 do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 1 then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
""")


async def save(redis: aioredis.Redis, namespace: str, positions: Mapping[str, str]) -> None:
    """Record what the API actor has taken (a crash before this only re-delivers), for tenants that exist."""
    if positions:
        await _SAVE(
            redis, [keys.broadcaster_positions(namespace), keys.TENANTS], [x for p in positions.items() for x in p]
        )


async def started(redis: aioredis.Redis, namespace: str) -> bool:
    """Whether the deployment's broadcaster has its positions (until then no WebSocket is admitted)."""
    return bool(await redis.exists(keys.broadcaster_positions(namespace)))
