"""Schedules: cron records in `schedule:{id}` hashes, a due index, and atomic slot claims.

Cron parsing and next-time computation are croniter's; time zones are zoneinfo's (tzdata).
Each tenant has its own due index (`tenant:{T}:{id}:due`), and its shard's due tenants hold
each tenant's earliest due slot, kept in step by every write: the scheduler reads which
tenants have work due, then serves them fairly, so one tenant's backlog never sits in front
of another's slots. A slot is claimed by moving the schedule's due score to its next slot
and recording "{id}:{slot}" in the in-flight index with a lease, in one Lua script, so two
schedulers never claim one slot twice; a lease that expires (its scheduler died) is claimed
again and the slot re-delivered with the same message id.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis.asyncio as aioredis
from croniter import croniter
from redis.exceptions import ResponseError, WatchError

from store import client, events, keys
from store.keys import ALL_SHARDS, shard_of
from store.quotas import create_within
from store.records import (
    decode_lenient,
    earliest,
    is_id,
    list_owned,
    new_id,
    now_rfc3339,
    optional,
    read_hashes,
    read_owned,
    to_hash,
    union,
)
from store.scripts import Lua, translated
from store.shards import FENCED_FN, Fence, fenced_keys

STATUSES = ("ok", "error", "skipped", "quarantined")

# Keeps schedules:due_tenants in step with one tenant's due index: its earliest slot, or gone.
_REINDEX_FN = """
local function reindex(tenant_due, due_tenants, tenant_id)
  local first = redis.call('ZRANGE', tenant_due, 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('ZADD', due_tenants, first[2], tenant_id)
  else
    redis.call('ZREM', due_tenants, tenant_id)
  end
end
"""

# KEYS: the tenant's due index, due_tenants. ARGV: tenant id.
_REINDEX = Lua(_REINDEX_FN + "reindex(KEYS[1], KEYS[2], ARGV[1])\nreturn 1")


async def _reindex(redis: aioredis.Redis, pipe: Any, tenant_id: str) -> None:
    """Queue, on `pipe`, the update of the tenant's entry in its shard's due tenants."""
    due_tenants = keys.schedules_due_tenants(shard_of(tenant_id))
    await _REINDEX(redis, [keys.tenant_due(tenant_id), due_tenants], [tenant_id], pipe=pipe)


EDITABLE = ("workspace_id", "name", "cron", "timezone", "prompt", "enabled")


def zone(name: str) -> ZoneInfo:
    """The IANA zone; ValueError for an unknown name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _iterator(cron: str, tz: ZoneInfo, start: float) -> croniter:
    fields = cron.split()
    if any(re.match(r"^[HR](\(|/|$)", field.upper()) for field in cron.split()):
        # croniter's hashed/random extensions are not cron, and R changes on every read.
        raise ValueError(f"cron must use standard fields only (no H or R): {cron!r}")
    if len(fields) not in (5, 6):
        raise ValueError(f"cron must have 5 fields, or 6 with a leading seconds field: {cron!r}")
    if not croniter.is_valid(cron, second_at_beginning=len(fields) == 6):
        raise ValueError(f"cron does not parse: {cron!r}")
    moment = datetime.fromtimestamp(start, tz=tz)
    return croniter(cron, moment, second_at_beginning=len(fields) == 6)


def next_slot(cron: str, tz_name: str, after: float) -> int:
    """The first slot strictly after `after`, in unix seconds."""
    try:
        return int(_iterator(cron, zone(tz_name), after).get_next(float))
    except (ValueError, KeyError, OverflowError) as exc:
        raise ValueError(str(exc) or f"cron never fires: {cron!r}") from None


def latest_slot(cron: str, tz_name: str, at: float, not_before: float) -> int:
    """The latest slot at or before `at`, but not before `not_before` (the slot that was due)."""
    return Slots(at).latest(cron, tz_name, int(not_before))


def validate_cron(cron: str, tz_name: str, now: float) -> int:
    """Check cron and zone together; returns the next slot. ValueError names the bad field."""
    try:
        tz_name and zone(tz_name)
    except ValueError as exc:
        raise ValueError(f"timezone: {exc}") from None
    try:
        return next_slot(cron, tz_name, now)
    except ValueError as exc:
        raise ValueError(f"cron: {exc}") from None


class Slots:
    """Slot arithmetic at one moment, shared by every schedule with the same cron and zone.

    croniter parses an expression in 150-600 microseconds; most schedules share a few
    expressions, so a tick parses each once instead of three times per fire.
    """

    def __init__(self, now: float) -> None:
        self.now = now
        self._memo: dict[tuple[str, str], tuple[int, int] | str] = {}

    def around(self, cron: str, tz_name: str) -> tuple[int, int]:
        """(the latest slot at or before now, the first slot after now); ValueError naming the bad field."""
        key = (cron, tz_name)
        found = self._memo.get(key)
        if found is None:
            try:
                following = validate_cron(cron, tz_name, self.now)
                try:
                    # get_prev is strictly before its start; slots are whole seconds.
                    iterator = _iterator(cron, zone(tz_name), math.floor(self.now) + 1)
                    previous = int(iterator.get_prev(float))
                except (ValueError, KeyError, OverflowError):
                    previous = 0  # no slot before now: only the due slot counts
                found = (previous, following)
            except ValueError as exc:
                found = str(exc)
            self._memo[key] = found
        if isinstance(found, str):
            raise ValueError(found)
        return found

    def latest(self, cron: str, tz_name: str, not_before: int) -> int:
        """The slot to deliver for a schedule due at `not_before`: the latest one now, never earlier."""
        return max(self.around(cron, tz_name)[0], not_before)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def public(fields: dict[str, str]) -> dict[str, Any]:
    """A schedule hash as the API shows it (tolerant of a hash corrupted in Redis)."""
    return {
        "id": fields.get("id", ""),
        "workspace_id": fields.get("workspace_id", ""),
        "name": fields.get("name", ""),
        "cron": fields.get("cron", ""),
        "timezone": fields.get("timezone", ""),
        "prompt": fields.get("prompt", ""),
        "enabled": fields.get("enabled") == "true",
        "created_at": fields.get("created_at", ""),
        "updated_at": fields.get("updated_at", ""),
        "next_run_at": optional(fields.get("next_run_at", "")),
        "last_run_at": optional(fields.get("last_run_at", "")),
        "last_status": optional(fields.get("last_status", "")),
        "last_error": optional(fields.get("last_error", "")),
        "run_count": _int(fields.get("run_count")),
        "consecutive_failures": _int(fields.get("consecutive_failures")),
    }


async def create(
    redis: aioredis.Redis, tenant_id: str, body: dict[str, Any], now: float, *, limit: float | None = None
) -> dict[str, Any]:
    """Store a schedule validated by the caller, due at its next slot if enabled.

    QuotaExceeded (nothing stored) if the tenant has `limit` schedules already.
    """
    schedule_id = new_id(shard_of(tenant_id))
    slot = validate_cron(body["cron"], body["timezone"], now)
    stamp = now_rfc3339(now)
    record = {
        "id": schedule_id,
        "tenant_id": tenant_id,
        **body,
        "created_at": stamp,
        "updated_at": stamp,
        "next_run_at": now_rfc3339(slot) if body["enabled"] else None,
        "last_run_at": None,
        "last_status": None,
        "last_error": None,
        "run_count": 0,
        "consecutive_failures": 0,
    }
    fields = to_hash(record)

    async def write(pipe: Any) -> None:
        pipe.hset(keys.schedule(schedule_id), mapping=fields)
        pipe.sadd(keys.tenant_schedules(tenant_id), schedule_id)
        if body["enabled"]:
            pipe.zadd(keys.tenant_due(tenant_id), {schedule_id: slot})
            await _reindex(redis, pipe, tenant_id)

    await create_within(redis, keys.tenant_schedules(tenant_id), limit, "schedules", write)
    return public(fields)


async def get(redis: aioredis.Redis, tenant_id: str, schedule_id: str) -> dict[str, str] | None:
    return await read_owned(redis, keys.schedule(schedule_id), tenant_id)


async def list_for(
    redis: aioredis.Redis, tenant_id: str, *, after: str | None = None, limit: int = 100
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the tenant's schedules, by id, and the next page's cursor (see records.list_owned)."""
    index = keys.tenant_schedules(tenant_id)
    return await list_owned(redis, index, keys.schedule, tenant_id, public, after=after, limit=limit)


async def patch(
    redis: aioredis.Redis, tenant_id: str, schedule_id: str, changes: dict[str, Any], now: float
) -> dict[str, Any] | None:
    """Apply validated changes atomically; None if the schedule is gone or not the tenant's.

    Only the changed and derived fields are written, in a transaction guarded by WATCH, so a
    concurrent fire's results or a concurrent DELETE are never overwritten or undone. A
    change of cron, timezone or enabled (or a PATCH of a quarantined schedule, which
    releases it) moves the schedule's due slot; other changes leave it alone.
    """
    key = keys.schedule(schedule_id)
    invalid: ValueError | None = None
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                raw = await pipe.hgetall(key)
                if not raw:
                    return None
                fields = decode_lenient(raw)
                if fields.get("tenant_id") != tenant_id:
                    return None
                merged = {**fields, **to_hash(changes)}
                updates = to_hash(changes)
                enabled = merged.get("enabled") == "true"
                try:
                    slot = validate_cron(merged.get("cron", ""), merged.get("timezone", ""), now)
                except ValueError as exc:
                    # Raised after the pipeline is released (raising inside it masks the error).
                    invalid = exc
                    break
                released = fields.get("last_status") == "quarantined"
                timing = released or any(f in changes for f in ("cron", "timezone", "enabled"))
                updates["updated_at"] = now_rfc3339(now)
                updates["consecutive_failures"] = "0"
                if released:
                    updates["last_status"] = ""
                    updates["last_error"] = ""
                if timing:
                    updates["next_run_at"] = now_rfc3339(slot) if enabled else ""
                pipe.multi()
                pipe.hset(key, mapping=updates)
                if timing and enabled:
                    pipe.zadd(keys.tenant_due(tenant_id), {schedule_id: slot})
                elif not enabled:
                    pipe.zrem(keys.tenant_due(tenant_id), schedule_id)
                await _reindex(redis, pipe, tenant_id)
                pipe.srem(keys.schedules_quarantined(shard_of(schedule_id)), schedule_id)
                await pipe.execute()
                return public({**merged, **updates})
            except WatchError:
                continue
    assert invalid is not None
    raise invalid


async def delete(redis: aioredis.Redis, tenant_id: str, schedule_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.schedule(schedule_id))
        pipe.zrem(keys.tenant_due(tenant_id), schedule_id)
        await _reindex(redis, pipe, tenant_id)
        pipe.srem(keys.schedules_quarantined(shard_of(schedule_id)), schedule_id)
        pipe.srem(keys.tenant_schedules(tenant_id), schedule_id)
        await pipe.execute()


# -- the scheduler's verbs ----------------------------------------------------------------


def message_id(schedule_id: str, slot: int) -> str:
    """The A2A messageId of one slot: the same on every re-delivery (contract)."""
    return f"cron-{schedule_id}-{slot}"


def version(raw: Any) -> str:
    """A digest of a schedule hash as read; compared to write only over what was read."""
    if not isinstance(raw, dict):
        return f"unreadable: {raw}"
    return hashlib.sha256(b"\0".join(k + b"=" + v for k, v in sorted(raw.items()))).hexdigest()


async def read(redis: aioredis.Redis, schedule_ids: Sequence[str]) -> list[Any]:
    """The stored hashes, in one round trip; a key of the wrong type reads as its error (an Exception)."""
    return await read_hashes(redis, [keys.schedule(i) for i in schedule_ids])


async def due_tenants(redis: aioredis.Redis, now: float, limit: int, shards: Sequence[int] = ALL_SHARDS) -> list[str]:
    """Up to `limit` tenants of `shards` with a slot due at or before `now`, the longest waiting first."""
    return await earliest(redis, keys.schedules_due_tenants, now, limit, shards)


async def due(redis: aioredis.Redis, now: float, wants: Mapping[str, int]) -> dict[str, list[tuple[str, int]]]:
    """For each tenant, up to `wants[tenant]` of its schedules due at or before `now`, earliest
    first, as (id, due slot); one round trip."""
    tenant_ids = [t for t, n in wants.items() if n > 0]
    if not tenant_ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for t in tenant_ids:
            pipe.zrangebyscore(keys.tenant_due(t), "-inf", now, start=0, num=wants[t], withscores=True)
        found = await pipe.execute()
    return {t: [(m.decode(), int(score)) for m, score in rows] for t, rows in zip(tenant_ids, found, strict=True)}


SCHEDULES_DUE_LEGACY = "schedules:due"  # one due index for every tenant, before per-tenant ones (single Redis only)


async def move_legacy_due(redis: aioredis.Redis) -> int:
    """Move a due index written before per-tenant indexes (`schedules:due`) into them; how many moved.

    Each schedule goes to its tenant's index (a slot already there wins); one whose record is
    gone is dropped, and one with no readable tenant is quarantined: nothing could fire it.
    """
    moved = 0
    while rows := await redis.zrange(SCHEDULES_DUE_LEGACY, 0, 499, withscores=True):
        ids = [m.decode() for m, _ in rows]
        raws = await read_hashes(redis, [keys.schedule(i) for i in ids])
        async with redis.pipeline(transaction=True) as pipe:
            for (schedule_id, (_, score)), raw in zip(zip(ids, rows, strict=True), raws, strict=True):
                tenant_id = decode_lenient(raw).get("tenant_id", "") if isinstance(raw, dict) else ""
                if is_id(tenant_id):
                    pipe.zadd(keys.tenant_due(tenant_id), {schedule_id: int(score)}, nx=True)
                    await _reindex(redis, pipe, tenant_id)
                    moved += 1
                elif raw:
                    pipe.sadd(keys.schedules_quarantined(shard_of(schedule_id)), schedule_id)
            pipe.zrem(SCHEDULES_DUE_LEGACY, *ids)
            await pipe.execute()
    return moved


@dataclass(frozen=True)
class Lease:
    """A claimed slot being delivered, and when its lease runs out (in its schedule's shard's in-flight index)."""

    schedule_id: str
    slot: int
    expires: int

    @property
    def member(self) -> str:
        return f"{self.schedule_id}:{self.slot}"


async def expired_leases(
    redis: aioredis.Redis, now: float, limit: int, shards: Sequence[int] = ALL_SHARDS
) -> list[Lease]:
    """Up to `limit` slots of `shards` whose scheduler died before completing them, the oldest first."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.zrangebyscore(keys.schedules_inflight(shard), "-inf", now, start=0, num=limit, withscores=True)
        found = await pipe.execute()
    leases = []
    for rows in found:
        for member, expires in rows:
            schedule_id, _, slot = member.decode().rpartition(":")
            leases.append(Lease(schedule_id, int(slot), int(expires)))
    return sorted(leases, key=lambda lease: lease.expires)[:limit]


# Every verb that moves a slot takes the fence of its shard's lease (store.shards): the
# write happens only while that lease is the one it holds.

# KEYS: inflight, [the shard's lease]. ARGV: member, expected lease, new lease, fence token.
_RECLAIM = Lua(
    FENCED_FN
    + """
if fenced_out(2, ARGV[4]) then return 0 end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""
)


async def reclaim(redis: aioredis.Redis, lease: Lease, expires: int, fence: Fence | None = None) -> bool:
    """Take over an expired lease (until `expires`) unless another scheduler did first (or `fence` is stale)."""
    inflight = keys.schedules_inflight(shard_of(lease.schedule_id))
    lease_keys, token = fenced_keys(fence)
    return bool(await _RECLAIM(redis, [inflight, *lease_keys], [lease.member, lease.expires, expires, token]))


@dataclass(frozen=True)
class Claim:
    """What claiming one due schedule writes: its slot leased, its due score moved to `following`."""

    tenant_id: str
    schedule_id: str
    due: int
    slot: int
    following: int
    lease_expires: int
    fence: Fence | None = None  # the lease of the tenant's shard, when the scheduler has replicas


# KEYS: the tenant's due index, inflight, schedule hash, due_tenants, [the shard's lease].
# ARGV: id, expected due score, member, next slot, lease, next_run_at, tenant id, fence token.
_CLAIM = Lua(
    _REINDEX_FN
    + FENCED_FN
    + """
if fenced_out(5, ARGV[8]) then return 0 end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
redis.call('HSET', KEYS[3], 'next_run_at', ARGV[6])
reindex(KEYS[1], KEYS[4], ARGV[7])
return 1
"""
)


async def claim(redis: aioredis.Redis, claims: Sequence[Claim]) -> list[bool]:
    """Claim each slot unless its due score moved (another scheduler, a PATCH); one round trip.

    Each claim is atomic on its own: two schedulers never both win one slot.
    """
    if not claims:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for c in claims:
            lease = Lease(c.schedule_id, c.slot, c.lease_expires)
            args = [
                c.schedule_id,
                c.due,
                lease.member,
                c.following,
                c.lease_expires,
                now_rfc3339(c.following),
                c.tenant_id,
            ]
            lease_keys, token = fenced_keys(c.fence)
            claim_keys = [
                keys.tenant_due(c.tenant_id),
                keys.schedules_inflight(shard_of(c.schedule_id)),
                keys.schedule(c.schedule_id),
                keys.schedules_due_tenants(shard_of(c.tenant_id)),
                *lease_keys,
            ]
            args.append(token)
            await _CLAIM(redis, claim_keys, args, pipe=pipe)
        try:
            return [bool(won) for won in await pipe.execute()]
        except ResponseError as exc:
            raise translated(exc) from None


# KEYS: schedule hash, inflight, events stream, its size key, [the shard's lease]. ARGV:
# member, last_run_at, status, error, maxlen, fence token, then the event's field/value pairs
# (store.events.entry). Completes a slot once; never recreates a schedule deleted meanwhile.
_COMPLETE = Lua(
    events.APPEND_FN
    + FENCED_FN
    + """
if fenced_out(5, ARGV[6]) then return 0 end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_run_at', ARGV[2], 'last_status', ARGV[3], 'last_error', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'run_count', 1)
if ARGV[3] == 'ok' then
  redis.call('HSET', KEYS[1], 'consecutive_failures', '0')
else
  redis.call('HINCRBY', KEYS[1], 'consecutive_failures', 1)
end
append_event(KEYS[3], KEYS[4], tonumber(ARGV[5]), 7)
return 1
"""
)


@dataclass(frozen=True)
class Completion:
    """A delivered slot to record: ok unless `error`; with `fence`, only while that lease holds."""

    schedule_id: str
    slot: int
    tenant_id: str
    workspace_id: str
    error: str | None
    fence: Fence | None = None


async def complete_many(redis: aioredis.Redis, done: Sequence[Completion], *, max_len: int) -> list[Any]:
    """Record delivered slots, each with its SCHEDULE_FIRED event, once; one round trip.

    Each item is True if recorded, False if it was already (a re-delivery), its schedule
    was deleted or its fence is stale (the slot stays in flight, for the shard's owner to
    deliver again), or the Exception Redis answered for it (a record it cannot write): one
    item's error is never another's.
    """
    if not done:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for c in done:
            status = "ok" if c.error is None else "error"
            payload = {
                "schedule_id": c.schedule_id,
                "status": status,
                "error": c.error,
                "message_id": message_id(c.schedule_id, c.slot),
            }
            event = events.entry("SCHEDULE_FIRED", c.tenant_id, c.workspace_id, payload)
            lease = Lease(c.schedule_id, c.slot, 0)
            lease_keys, token = fenced_keys(c.fence)
            args = [lease.member, now_rfc3339(), status, c.error or "", max_len, token, *events.flat(event)]
            inflight, stream = keys.schedules_inflight(shard_of(c.schedule_id)), keys.events(c.tenant_id)
            script_keys = [keys.schedule(c.schedule_id), inflight, stream, keys.events_size(c.tenant_id), *lease_keys]
            await _COMPLETE(redis, script_keys, args, pipe=pipe)
        found = await pipe.execute(raise_on_error=False)
    return [translated(r) if isinstance(r, Exception) else bool(r) for r in found]


async def complete(
    redis: aioredis.Redis,
    schedule_id: str,
    slot: int,
    *,
    tenant_id: str,
    workspace_id: str,
    error: str | None,
    max_len: int,
) -> bool:
    """Record one delivered slot (see `complete_many`); raises the error Redis answered for it."""
    (result,) = await complete_many(
        redis, [Completion(schedule_id, slot, tenant_id, workspace_id, error)], max_len=max_len
    )
    if isinstance(result, Exception):
        raise result
    return bool(result)


# KEYS: inflight, [the shard's lease]. ARGV: member, fence token.
_DROP = Lua(
    FENCED_FN
    + """
if fenced_out(2, ARGV[2]) then return 0 end
return redis.call('ZREM', KEYS[1], ARGV[1])
"""
)


async def drop_lease(redis: aioredis.Redis, schedule_id: str, slot: int, fence: Fence | None = None) -> None:
    """Forget a slot in flight without recording it (it cannot be recorded, or its schedule is gone);
    with `fence`, only while that lease holds (else the slot is its shard's new owner's)."""
    lease_keys, token = fenced_keys(fence)
    inflight = keys.schedules_inflight(shard_of(schedule_id))
    await _DROP(redis, [inflight, *lease_keys], [Lease(schedule_id, slot, 0).member, token])


async def quarantined_count(redis: aioredis.Redis, shards: Sequence[int] = ALL_SHARDS) -> int:
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.scard(keys.schedules_quarantined(shard))
        return sum(await pipe.execute())


async def quarantined(redis: aioredis.Redis, shards: Sequence[int] = ALL_SHARDS) -> list[dict[str, Any]]:
    """Every quarantined schedule of `shards` as operators see it: key (its id), tenant_id, error, since, failures."""
    ids = await union(redis, keys.schedules_quarantined, shards)
    items = []
    for schedule_id, raw in zip(ids, await read(redis, ids), strict=True):
        unreadable = isinstance(raw, Exception)
        fields = decode_lenient(raw) if raw and not unreadable else {}
        failures = fields.get("consecutive_failures", "")
        items.append(
            {
                "key": schedule_id,
                "tenant_id": fields.get("tenant_id") or None,
                "error": fields.get("last_error") or (f"record unreadable: {raw}" if unreadable else None),
                "since": fields.get("quarantined_at") or None,
                "failures": int(failures) if failures.isdigit() else None,
            }
        )
    return items


async def release(redis: aioredis.Redis, schedule_id: str, now: float) -> bool:
    """An operator's release of a quarantined schedule; False if it is not quarantined.

    Its failures are forgotten and it is due again: at its next slot, or at once if its
    cron cannot be read (the scheduler tries it and records why). A record with no tenant
    is only taken off the quarantine list: there is no due index to put it in.
    """
    key = keys.schedule(schedule_id)
    held_in = keys.schedules_quarantined(shard_of(schedule_id))
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(held_in, key)
                if not await pipe.sismember(held_in, schedule_id):
                    return False
                try:
                    fields = decode_lenient(await pipe.hgetall(key))
                except ResponseError:  # not a hash
                    fields = {}
                tenant_id = fields.get("tenant_id", "")
                try:
                    slot = validate_cron(fields.get("cron", ""), fields.get("timezone", ""), now)
                except ValueError:
                    slot = int(now)
                pipe.multi()
                pipe.srem(held_in, schedule_id)
                if fields and is_id(tenant_id):
                    cleared = {"last_status": "", "last_error": "", "consecutive_failures": "0", "quarantined_at": ""}
                    pipe.hset(key, mapping=cleared)
                    if fields.get("enabled") == "true":
                        pipe.hset(key, "next_run_at", now_rfc3339(slot))
                        pipe.zadd(keys.tenant_due(tenant_id), {schedule_id: slot})
                        await _reindex(redis, pipe, tenant_id)
                await pipe.execute()
                return True
            except WatchError:
                continue


async def _if_unchanged(
    redis: aioredis.Redis,
    schedule_id: str,
    read_as: str,
    write: Callable[[Any, dict[bytes, bytes]], Awaitable[None]],
) -> dict[bytes, bytes] | None:
    """Run `write(pipe, raw)` in a transaction only if the record's version is still `read_as`.

    A PATCH or DELETE that lands meanwhile wins: nothing is written (and a deleted schedule
    is never recreated). Returns the record written over, or None.
    """
    key = keys.schedule(schedule_id)
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(key)
            raw = await pipe.hgetall(key)
            if not raw or version(raw) != read_as:
                return None
            pipe.multi()
            await write(pipe, raw)
            await pipe.execute()
            return raw
        except WatchError:
            return None
        except ResponseError:  # a key of the wrong type: nothing to record on
            return None


async def record_error(
    redis: aioredis.Redis, tenant_id: str, schedule_id: str, read_as: str, error: str | None, now: float
) -> bool:
    """Record a failure on a schedule read as version `read_as` from `tenant_id`'s due index;
    its next try is a second later.

    Returns whether it was written (not if the schedule changed or went meanwhile).
    """

    async def write(pipe: Any, raw: dict[bytes, bytes]) -> None:
        key = keys.schedule(schedule_id)
        pipe.hset(key, mapping={"last_status": "error", "last_error": error or "unknown error"})
        pipe.hincrby(key, "consecutive_failures", 1)
        pipe.zadd(keys.tenant_due(tenant_id), {schedule_id: int(now) + 1}, xx=True)
        await _reindex(redis, pipe, tenant_id)

    return await _if_unchanged(redis, schedule_id, read_as, write) is not None


async def quarantine(
    redis: aioredis.Redis, tenant_id: str, schedule_id: str, read_as: str, error: str, *, max_len: int
) -> bool:
    """Take a schedule (read as version `read_as`) out of `tenant_id`'s due index until a PATCH fixes it.

    Its slots in flight are dropped, its record says `quarantined`, and its tenant gets a
    SCHEDULE_QUARANTINED event, in one transaction. A key that is no schedule record (gone,
    or not a hash) is only taken out of the indexes. `tenant_id` is "" for a slot found in
    flight (no due index was read): then only the record and its slots are touched. On a
    Redis Cluster, a record that names a tenant of another shard (corrupt) gets no event: that
    tenant's stream is in another slot. Returns whether a record was marked.
    """
    shard = shard_of(schedule_id)
    inflight_key = keys.schedules_inflight(shard)
    inflight = await redis.zrange(inflight_key, 0, -1)
    stuck = [m for m in inflight if m.decode().rpartition(":")[0] == schedule_id]

    indexed = is_id(tenant_id)

    async def write(pipe: Any, raw: dict[bytes, bytes]) -> None:
        key = keys.schedule(schedule_id)
        if indexed:
            pipe.zrem(keys.tenant_due(tenant_id), schedule_id)
            await _reindex(redis, pipe, tenant_id)
        if stuck:
            pipe.zrem(inflight_key, *stuck)
        pipe.sadd(keys.schedules_quarantined(shard), schedule_id)
        pipe.hset(key, mapping={"last_status": "quarantined", "last_error": error, "quarantined_at": now_rfc3339()})
        pipe.hincrby(key, "consecutive_failures", 1)
        fields = decode_lenient(raw)
        owner = fields.get("tenant_id", "")
        if is_id(owner) and (shard_of(owner) == shard or not client.is_cluster(redis)):
            payload = {"schedule_id": schedule_id, "error": error}
            entry = events.entry("SCHEDULE_QUARANTINED", owner, fields.get("workspace_id", ""), payload)
            await events.append_in(redis, pipe, owner, entry, max_len)

    if await _if_unchanged(redis, schedule_id, read_as, write) is not None:
        return True
    if await redis.type(keys.schedule(schedule_id)) != b"hash":
        # No record a PATCH could fix: just stop trying it.
        async with redis.pipeline(transaction=True) as pipe:
            if indexed:
                pipe.zrem(keys.tenant_due(tenant_id), schedule_id)
                await _reindex(redis, pipe, tenant_id)
            if stuck:
                pipe.zrem(inflight_key, *stuck)
            await pipe.execute()
    return False
