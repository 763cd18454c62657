"""Shard ownership: which replica of a subsystem works which shards, by leases in Redis.

The replicas of a subsystem (a `kind`: scheduler, channel-manager, ...) of one deployment
(`namespace`) announce themselves in `members:{ns}:{kind}` with an expiry, and each wants
the shards that rendezvous hashing with bounded loads gives it among the live members
(`assigned`): each an even share, and a member joining or leaving moves little more than
the shards it takes or gives. A replica owns a shard by its lease `lease:{S}:{ns}:{kind}`,
in the shard's own slot. Taking a lease that is free, released or expired raises its
fencing token, and every script that does a shard's work checks the token in the same
script (FENCE_FN), so a replica that lost a shard (paused, partitioned, slow) can no
longer claim, complete or post for it. A lease records when it was taken (`since`) and when
its previous holder's ended (`prev_end`: expired or released), so anyone can check from
Redis that no two replicas ever held one shard at once (`since >= prev_end` unless the
previous holder is the same replica, started again). Times are Redis's (`TIME`, ms).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from store import keys
from store.keys import ALL_SHARDS
from store.scripts import Lua

# now_ms(): Redis's clock in milliseconds.
NOW_FN = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# fenced(lease, token): whether `token` is that of the lease, and the lease valid now: its
# holder may write for the shard.
FENCE_FN = (
    NOW_FN
    + """
local function fenced(lease, token)
  local found = redis.call('HMGET', lease, 'token', 'expires')
  return found[1] == token and (tonumber(found[2]) or 0) > now_ms()
end
"""
)


@dataclass(frozen=True)
class Fence:
    """A shard's lease as its holder knows it; a write for the shard passes it (KEYS: lease, ARGV: token)."""

    shard: int
    token: str
    lease_key: str


def fenced_keys(fence: Fence | None) -> tuple[list[str], str]:
    """The extra KEYS and the token ARGV of a write fenced by a shard's lease (none, "": not fenced)."""
    return ([fence.lease_key], fence.token) if fence else ([], "")


_VALID = FENCE_FN + "return fenced(KEYS[1], ARGV[1]) and 1 or 0"


async def valid(redis: aioredis.Redis, fence: Fence) -> bool:
    """Whether `fence` is its lease's token and the lease valid now (by Redis's clock): for a
    transaction that WATCHes the lease (a script checks with FENCE_FN instead). One EVAL,
    since a cluster's transaction cannot send TIME."""
    return bool(await redis.eval(_VALID, 1, fence.lease_key, fence.token))


# fenced_out(at, token): a script whose KEYS[at] is a lease (fenced_keys put it there) and
# whose `token` is not that lease's valid token must not write; without KEYS[at], no fence.
FENCED_FN = (
    FENCE_FN
    + """
local function fenced_out(lease_at, token)
  return KEYS[lease_at] ~= nil and not fenced(KEYS[lease_at], token)
end
"""
)


# KEYS: the lease. ARGV: owner ("<replica>#<incarnation>"), ttl ms, the token it holds ("" for none).
# {1, token, expires}: held (renewed with the token it holds, or taken); {0, owner, expires}: another's.
# A renewal keeps the token even just after expiry (nobody took the lease meanwhile). A newer
# incarnation of the same replica (Ray started it again) takes its lease over at once: the
# process before it, if it still runs, is fenced out, and can never take the lease back.
_ACQUIRE = Lua(
    FENCE_FN
    + """
local function incarnation(owner)
  local name, n = string.match(owner, '^(.*)#(%d+)$')
  return name or owner, tonumber(n) or 0
end
local now = now_ms()
local found = redis.call('HMGET', KEYS[1], 'owner', 'token', 'expires')
local owner, token, expires = found[1] or '', found[2] or '', tonumber(found[3]) or 0
local renewal = owner == ARGV[1] and token == ARGV[3] and ARGV[3] ~= ''
local me, mine = incarnation(ARGV[1])
local holder, theirs = incarnation(owner)
local restarted = owner ~= '' and holder == me and theirs < mine
if owner ~= '' and expires > now and not renewal and not restarted then return {0, owner, expires} end
local until_ms = now + tonumber(ARGV[2])
if renewal then
  redis.call('HSET', KEYS[1], 'expires', until_ms)
  return {1, token, until_ms}
end
local prev_owner, prev_end = owner, expires
if owner == '' then
  local released = redis.call('HMGET', KEYS[1], 'released_by', 'released_at')
  prev_owner, prev_end = released[1] or '', tonumber(released[2]) or 0
end
token = tostring(redis.call('HINCRBY', KEYS[1], 'token', 1))
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'expires', until_ms, 'since', now,
  'prev_owner', prev_owner, 'prev_end', prev_end)
return {1, token, until_ms}
"""
)

# KEYS: the lease. ARGV: owner, token. Lets go of a lease only with the token it is held by
# (the token counter stays: whoever takes it next gets a higher one).
_RELEASE = Lua(
    FENCE_FN
    + """
local found = redis.call('HMGET', KEYS[1], 'owner', 'token', 'expires')
if found[1] ~= ARGV[1] or found[2] ~= ARGV[2] then return 0 end
local now = now_ms()
local ended = math.min(tonumber(found[3]) or 0, now)
redis.call('HSET', KEYS[1], 'owner', '', 'expires', 0, 'released_by', ARGV[1], 'released_at', ended)
return 1
"""
)

# KEYS: the members index. ARGV: member, ttl ms. Announces the member, forgets the expired,
# and returns the live ones.
_ANNOUNCE = Lua(
    FENCE_FN
    + """
local now = now_ms()
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)


def fence_of(shard: int, namespace: str, kind: str, token: str) -> Fence:
    return Fence(shard, token, keys.shard_lease(shard, namespace, kind))


async def announce(redis: aioredis.Redis, namespace: str, kind: str, member: str, ttl_ms: int) -> list[str]:
    """Say `member` is live for `ttl_ms`; the live members, sorted."""
    found = await _ANNOUNCE(redis, [keys.shard_members(namespace, kind)], [member, ttl_ms])
    return sorted(m.decode() for m in found)


async def leave(redis: aioredis.Redis, namespace: str, kind: str, member: str) -> None:
    await redis.zrem(keys.shard_members(namespace, kind), member)


def assigned(members: Sequence[str], shards: Sequence[int] = ALL_SHARDS) -> dict[str, list[int]]:
    """Each member's shards: rendezvous hashing with bounded loads, so every member gets
    len(shards) // len(members) shards or one more, and a member joining or leaving moves
    few more shards than it takes or gives.

    Every (shard, member) pair has a hash, and the pairs are taken from the highest down: a
    shard goes to the first member that still has room, first up to the even share each,
    then the shards left over one each. Every member computes the same answer from the same
    members: it depends on nothing else.
    """
    out: dict[str, list[int]] = {m: [] for m in members}
    if not members:
        return out
    even = len(shards) // len(members)
    pairs = sorted(
        (
            (hashlib.blake2b(f"{shard}/{m}".encode(), digest_size=8).digest(), shard, m)
            for shard in shards
            for m in members
        ),
        reverse=True,
    )
    owner: dict[int, str] = {}
    for room in (even, even + 1):
        for _, shard, member in pairs:
            if shard not in owner and len(out[member]) < room:
                owner[shard] = member
                out[member].append(shard)
    return {m: sorted(got) for m, got in out.items()}


@dataclass(frozen=True)
class Lease:
    """One acquire's outcome: held (its fence, until when) or another's (its owner, until when)."""

    shard: int
    held: bool
    token_or_owner: str
    expires_ms: int


async def acquire(
    redis: aioredis.Redis, namespace: str, kind: str, owner: str, ttl_ms: int, held: dict[int, str]
) -> dict[int, Lease]:
    """Renew the leases `owner` holds (`held`: shard -> token) and try to take the other shards of
    `held`'s keys whose token is ""; one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard, token in held.items():
            await _ACQUIRE(redis, [keys.shard_lease(shard, namespace, kind)], [owner, ttl_ms, token], pipe=pipe)
        found = await pipe.execute()
    return {
        shard: Lease(shard, bool(ok), value.decode() if isinstance(value, bytes) else str(value), int(expires))
        for shard, (ok, value, expires) in zip(held, found, strict=True)
    }


async def release(redis: aioredis.Redis, namespace: str, kind: str, owner: str, shard: int, token: str) -> bool:
    """Let go of a lease held with `token` (its next holder need not wait for it to expire)."""
    return bool(await _RELEASE(redis, [keys.shard_lease(shard, namespace, kind)], [owner, token]))


@dataclass(frozen=True)
class Holder:
    """A shard's lease as stored (times in Redis ms; owner "" when free, else "<replica>#<incarnation>")."""

    owner: str
    token: int
    expires: int
    since: int
    prev_owner: str
    prev_end: int

    @property
    def replica(self) -> str:
        return replica_of(self.owner)

    @property
    def prev_replica(self) -> str:
        return replica_of(self.prev_owner)


def replica_of(owner: str) -> str:
    """The replica's name in a lease's owner ("<replica>#<incarnation>")."""
    return owner.rpartition("#")[0] or owner


async def incarnation(redis: aioredis.Redis, namespace: str, kind: str, member: str) -> str:
    """A lease owner for a process of replica `member`: "<member>#<n>", n higher than any before it."""
    return f"{member}#{await redis.incr(keys.shard_incarnation(namespace, kind, member))}"


async def holders(
    redis: aioredis.Redis, namespace: str, kind: str, shards: Sequence[int] = ALL_SHARDS
) -> tuple[int, dict[int, Holder]]:
    """Each shard's lease as stored, and Redis's time (ms) just after it was read (a lease that
    expires after that time was valid when read); for operators and tests."""
    fields = ("owner", "token", "expires", "since", "prev_owner", "prev_end")
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.hmget(keys.shard_lease(shard, namespace, kind), *fields)
        found = await pipe.execute()
    seconds, micros = await redis.time()
    out = {}
    for shard, (owner, token, expires, since, prev_owner, prev_end) in zip(shards, found, strict=True):
        out[shard] = Holder(
            (owner or b"").decode(),
            int(token or 0),
            int(expires or 0),
            int(since or 0),
            (prev_owner or b"").decode(),
            int(prev_end or 0),
        )
    return int(seconds) * 1000 + int(micros) // 1000, out
