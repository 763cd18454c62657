"""The broadcaster's positions: per tenant, the last stream id the API actor has taken.

They are kept per shard (beside the shard's tenants index, so a save keeps only tenants
that exist, in one script), and a deployment's `started` key says they were written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis

from store import keys
from store.keys import ALL_SHARDS, shard_of
from store.scripts import Lua


async def load(redis: aioredis.Redis, namespace: str, shards: Sequence[int] = ALL_SHARDS) -> dict[str, str] | None:
    """The saved positions of `shards`; None if this deployment has none yet (it never started, or
    Redis lost them)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(keys.broadcaster_started(namespace))
        for shard in shards:
            pipe.hgetall(keys.broadcaster_positions(shard, namespace))
        started, *found = await pipe.execute()
    if not started:
        return None
    return {k.decode(): v.decode() for saved in found for k, v in saved.items()}


async def start(redis: aioredis.Redis, namespace: str, positions: Mapping[str, str]) -> None:
    """Write the positions of a (re)started deployment; from now on WebSockets are admitted."""
    await save(redis, namespace, positions)
    await redis.set(keys.broadcaster_started(namespace), str(time.time()))


# KEYS: the shard's positions hash, its tenants set. ARGV: tenant id, position, ... Only tenants that
# still exist: a tenant deleted while its last events were on the way leaves no position behind.
_SAVE = Lua("""
for i = 1, #ARGV, 2 do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 1 then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
""")


async def save(redis: aioredis.Redis, namespace: str, positions: Mapping[str, str]) -> None:
    """Record what the API actor has taken (a crash before this only re-delivers), for tenants that exist;
    one script per shard, in one round trip."""
    by_shard: dict[int, list[str]] = {}
    for tenant_id, position in positions.items():
        by_shard.setdefault(shard_of(tenant_id), []).extend((tenant_id, position))
    if not by_shard:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for shard, args in by_shard.items():
            await _SAVE(redis, [keys.broadcaster_positions(shard, namespace), keys.tenants(shard)], args, pipe=pipe)
        await pipe.execute()


async def started(redis: aioredis.Redis, namespace: str) -> bool:
    """Whether the deployment's broadcaster has its positions (until then no WebSocket is admitted)."""
    return bool(await redis.exists(keys.broadcaster_started(namespace)))
