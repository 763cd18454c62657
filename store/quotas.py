"""Per-tenant quotas and weights: the platform's defaults, overridden per tenant by an admin.

A tenant's overrides live in its `tenant:{id}` hash (`quotas`: a JSON object of the
overridden names only, `weight`: its share of the scheduler when tenants contend), so a
changed default applies at once to every tenant that has no override of its own.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from store import keys

NAMES = (
    "workspaces",
    "schedules",
    "channels",
    "ws_connections",
    "events_per_s",
    "fires_in_flight",
    "relays_in_flight",
)
MAX_WEIGHT = 100


class QuotaExceeded(Exception):
    """A tenant's request would go over one of its quotas; nothing was stored."""

    def __init__(self, name: str, limit: float, retry_after_s: float | None = None) -> None:
        self.name = name
        self.limit = limit
        self.retry_after_s = retry_after_s
        shown = int(limit) if float(limit).is_integer() else limit
        super().__init__(f"quota exceeded: {name} (limit {shown})")


@dataclass(frozen=True)
class Share:
    """One tenant's effective quotas and weight."""

    quotas: Mapping[str, float]
    weight: int = 1

    def __getitem__(self, name: str) -> float:
        return self.quotas[name]


def _overrides(raw: bytes | None) -> dict[str, float]:
    try:
        found = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if k in NAMES and isinstance(v, int | float) and v > 0}


def _weight(raw: bytes | None) -> int:
    try:
        weight = int(raw or 1)
    except ValueError:
        return 1
    return min(max(weight, 1), MAX_WEIGHT)


def share(defaults: Mapping[str, float], quotas_raw: bytes | None, weight_raw: bytes | None) -> Share:
    return Share({**defaults, **_overrides(quotas_raw)}, _weight(weight_raw))


async def shares(redis: aioredis.Redis, defaults: Mapping[str, float], tenant_ids: Sequence[str]) -> dict[str, Share]:
    """Each tenant's effective share, in one round trip (a missing or damaged override: the default)."""
    if not tenant_ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for t in tenant_ids:
            pipe.hmget(keys.tenant(t), "quotas", "weight")
        found = await pipe.execute(raise_on_error=False)
    return {
        t: share(defaults, *(row if isinstance(row, list) else (None, None)))
        for t, row in zip(tenant_ids, found, strict=True)
    }


async def set_overrides(
    redis: aioredis.Redis, tenant_id: str, changes: Mapping[str, float | None], weight: int | None
) -> bool:
    """Merge quota overrides (None removes one: back to the default) and the weight; False if no tenant."""
    key = keys.tenant(tenant_id)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                if await pipe.type(key) == b"none":  # (a Cluster pipeline's EXISTS cannot be awaited)
                    return False
                current = _overrides(await pipe.hget(key, "quotas"))
                for name, value in changes.items():
                    if value is None:
                        current.pop(name, None)
                    else:
                        current[name] = value
                pipe.multi()
                pipe.hset(key, "quotas", json.dumps(current, sort_keys=True))
                if weight is not None:
                    pipe.hset(key, "weight", weight)
                await pipe.execute()
                return True
            except WatchError:
                continue


async def within(pipe: Any, set_key: str, limit: float | None, name: str) -> None:
    """WATCH `set_key` on the pipeline; QuotaExceeded if it already holds `limit` members (None: no quota).

    Called before `pipe.multi()`: a concurrent create changes the set and retries the
    transaction, so a tenant never ends up past its quota.
    """
    if limit is None:
        return  # no quota: nothing to watch (a WATCH would make concurrent creates retry)
    await pipe.watch(set_key)
    if await pipe.scard(set_key) >= limit:
        raise QuotaExceeded(name, limit)


async def create_within(
    redis: aioredis.Redis, set_key: str, limit: float | None, name: str, write: Callable[[Any], Awaitable[None]]
) -> None:
    """Queue `write(pipe)` in a transaction and run it, unless the tenant's set at `set_key`
    already holds `limit` members: then QuotaExceeded, and nothing is written. A create that
    lands meanwhile makes the check run again."""
    over: QuotaExceeded | None = None
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await within(pipe, set_key, limit, name)
                pipe.multi()
                await write(pipe)
                await pipe.execute()
                return
            except WatchError:
                continue
            except QuotaExceeded as exc:
                over = exc  # raised outside the pipeline, whose cleanup would mask it
                break
    assert over is not None
    raise over


# KEYS: the bucket hash. ARGV: rate per second, burst, now (seconds, float), cost.
# Returns 0 if taken, else the seconds until it could be.
TOKEN_BUCKET = """
local function take(bucket, rate, burst, now, cost)
  local state = redis.call('HMGET', bucket, 'tokens', 'at')
  local tokens = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
  if tokens < cost then
    return tostring((cost - tokens) / rate)
  end
  redis.call('HSET', bucket, 'tokens', tostring(tokens - cost), 'at', tostring(now))
  redis.call('EXPIRE', bucket, math.ceil(burst / rate) + 1)
  return 0
end
"""


def public(share_: Share) -> dict[str, Any]:
    return {name: share_.quotas[name] for name in NAMES}
