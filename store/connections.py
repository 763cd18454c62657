"""Each tenant's open WebSocket connections, counted across every API actor.

With an API on every node a tenant's connections are spread over several processes, so
neither its `ws_connections` quota nor a token that stops working can be kept in one of
them. A connection holds a member of its tenant's `tenant:{T}:{id}:ws_connections` zset,
scored by when it stops counting (Redis ms). Its API renews it every few seconds together
with the digest of the token it was opened with, and learns in that same script whether
the token still opens the tenant: a replaced token or a deleted tenant closes the
connection on every API within one renewal. An API that dies leaves its members to run out
within LEASE_MS, so its clients can open connections elsewhere at once or soon after.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NamedTuple

import redis.asyncio as aioredis

from store import keys
from store.scripts import Lua, translated
from store.shards import NOW_FN

LEASE_MS = 10_000  # several renewals (api: RENEW_S): a slow tick does not drop a connection's count


class Admission(enum.IntEnum):
    REFUSED_TOKEN = -1  # the token does not open the tenant (replaced, or the tenant deleted)
    OVER_QUOTA = 0
    ADMITTED = 1


# KEYS: the tenant's connections, the tenant's hash. ARGV: limit, member, lease ms, token digest.
# The token is confirmed here, in the tenant's own record, so a connect costs no round trip more.
_ADMIT = Lua(
    NOW_FN
    + """
if redis.call('HGET', KEYS[2], 'token_sha256') ~= ARGV[4] then return -1 end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS: the tenant's connections, the tenant's hash. ARGV: lease ms, then member, token digest, ...
# Each member whose digest is the tenant's token counts for another lease; the others are
# removed and returned (their token was replaced, or the tenant deleted: 0 first).
_RENEW = Lua(
    NOW_FN
    + """
local now = now_ms()
local current = redis.call('HGET', KEYS[2], 'token_sha256')
local revoked = {}
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == current then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
    revoked[#revoked + 1] = ARGV[i]
  end
end
if #revoked * 2 < #ARGV - 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {current and 1 or 0, revoked}
"""
)

# KEYS: the tenant's connections. -> how many count now.
_COUNT = Lua(NOW_FN + "return redis.call('ZCOUNT', KEYS[1], '(' .. now_ms(), '+inf')")


async def admit(
    redis: aioredis.Redis, tenant_id: str, digest: str, member: str, limit: int, lease_ms: int = LEASE_MS
) -> Admission:
    """Count connection `member` of the tenant, opened with the token of `digest`, unless that
    token does not open the tenant or `limit` of its connections count already."""
    keys_ = [keys.tenant_ws_connections(tenant_id), keys.tenant(tenant_id)]
    return Admission(await _ADMIT(redis, keys_, [limit, member, lease_ms, digest]))


class Revoked(NamedTuple):
    members: list[str]  # whose token no longer opens their tenant
    deleted: bool  # because the tenant was deleted (else its token was replaced)


async def renew(
    redis: aioredis.Redis, held: Mapping[str, Mapping[str, str]], lease_ms: int = LEASE_MS
) -> tuple[dict[str, Revoked], dict[str, Exception]]:
    """Renew the connections an API holds (tenant -> member -> its token's digest) in one
    round trip. Returns, per tenant, the members whose token no longer opens it, and the
    tenants whose renewal failed (each on its own: one tenant's error renews no fewer others).

    A member whose lease ran out (its API could not renew it for LEASE_MS) counts again, even
    if that takes its tenant past its quota for a while: the connection is open.
    """
    tenants = [t for t, members in held.items() if members]
    if not tenants:
        return {}, {}
    async with redis.pipeline(transaction=False) as pipe:
        for tenant_id in tenants:
            flat = [part for member, digest in held[tenant_id].items() for part in (member, digest)]
            keys_ = [keys.tenant_ws_connections(tenant_id), keys.tenant(tenant_id)]
            await _RENEW(redis, keys_, [lease_ms, *flat], pipe=pipe)
        answers = await pipe.execute(raise_on_error=False)
    revoked: dict[str, Revoked] = {}
    failed: dict[str, Exception] = {}
    for tenant_id, answer in zip(tenants, answers, strict=True):
        if isinstance(answer, Exception):
            failed[tenant_id] = translated(answer)
        elif answer[1]:
            revoked[tenant_id] = Revoked([m.decode() for m in answer[1]], deleted=not answer[0])
    return revoked, failed


async def release(redis: aioredis.Redis, tenant_id: str, member: str) -> None:
    await redis.zrem(keys.tenant_ws_connections(tenant_id), member)


async def count(redis: aioredis.Redis, tenant_id: str) -> int:
    """The tenant's connections that count now, on every API."""
    return int(await _COUNT(redis, [keys.tenant_ws_connections(tenant_id)]))
