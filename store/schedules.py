"""Schedules: cron records in `schedule:{id}` hashes, a due index, and atomic slot claims.

Cron parsing and next-time computation are croniter's; time zones are zoneinfo's (tzdata).
A slot is claimed by moving the schedule's due score to its next slot and recording
"{id}:{slot}" in the in-flight index with a lease, in one Lua script, so two schedulers
never claim one slot twice; a lease that expires (its scheduler died) is claimed again and
the slot re-delivered with the same message id.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis.asyncio as aioredis
from croniter import croniter
from redis.exceptions import ResponseError, WatchError

from store import events, keys
from store.records import (
    decode_lenient,
    is_id,
    list_owned,
    new_id,
    now_rfc3339,
    optional,
    read_hashes,
    read_owned,
    to_hash,
)
from store.scripts import Lua

STATUSES = ("ok", "error", "skipped", "quarantined")
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
    # get_prev is strictly before its start; slots are whole seconds.
    previous = int(_iterator(cron, zone(tz_name), math.floor(at) + 1).get_prev(float))
    assert previous <= at, (previous, at)
    return max(previous, int(not_before))


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


async def create(redis: aioredis.Redis, tenant_id: str, body: dict[str, Any], now: float) -> dict[str, Any]:
    schedule_id = new_id()
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
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.schedule(schedule_id), mapping=fields)
        pipe.sadd(keys.tenant_schedules(tenant_id), schedule_id)
        if body["enabled"]:
            pipe.zadd(keys.SCHEDULES_DUE, {schedule_id: slot})
        await pipe.execute()
    return public(fields)


async def get(redis: aioredis.Redis, tenant_id: str, schedule_id: str) -> dict[str, str] | None:
    return await read_owned(redis, keys.schedule(schedule_id), tenant_id)


async def list_for(redis: aioredis.Redis, tenant_id: str) -> list[dict[str, Any]]:
    return await list_owned(redis, keys.tenant_schedules(tenant_id), keys.schedule, tenant_id, public)


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
                    pipe.zadd(keys.SCHEDULES_DUE, {schedule_id: slot})
                elif not enabled:
                    pipe.zrem(keys.SCHEDULES_DUE, schedule_id)
                pipe.srem(keys.SCHEDULES_QUARANTINED, schedule_id)
                await pipe.execute()
                return public({**merged, **updates})
            except WatchError:
                continue
    assert invalid is not None
    raise invalid


async def delete(redis: aioredis.Redis, tenant_id: str, schedule_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.schedule(schedule_id))
        pipe.zrem(keys.SCHEDULES_DUE, schedule_id)
        pipe.srem(keys.SCHEDULES_QUARANTINED, schedule_id)
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


async def due(redis: aioredis.Redis, now: float, limit: int) -> list[tuple[str, int]]:
    """Up to `limit` schedules whose due slot is at or before `now`, earliest first: (id, due slot)."""
    found = await redis.zrangebyscore(keys.SCHEDULES_DUE, "-inf", now, start=0, num=limit, withscores=True)
    return [(member.decode(), int(score)) for member, score in found]


@dataclass(frozen=True)
class Lease:
    """A claimed slot being delivered, and when its lease runs out."""

    schedule_id: str
    slot: int
    expires: int

    @property
    def member(self) -> str:
        return f"{self.schedule_id}:{self.slot}"


async def expired_leases(redis: aioredis.Redis, now: float, limit: int) -> list[Lease]:
    """Up to `limit` slots whose scheduler died before completing them."""
    found = await redis.zrangebyscore(keys.SCHEDULES_INFLIGHT, "-inf", now, start=0, num=limit, withscores=True)
    leases = []
    for member, expires in found:
        schedule_id, _, slot = member.decode().rpartition(":")
        leases.append(Lease(schedule_id, int(slot), int(expires)))
    return leases


# KEYS: inflight. ARGV: member, expected lease, new lease.
_RECLAIM = Lua("""
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
""")


async def reclaim(redis: aioredis.Redis, lease: Lease, expires: int) -> bool:
    """Take over an expired lease (until `expires`) unless another scheduler did first."""
    return bool(await _RECLAIM(redis, [keys.SCHEDULES_INFLIGHT], [lease.member, lease.expires, expires]))


@dataclass(frozen=True)
class Claim:
    """What claiming one due schedule writes: its slot leased, its due score moved to `following`."""

    schedule_id: str
    due: int
    slot: int
    following: int
    lease_expires: int


# KEYS: due, inflight, schedule hash. ARGV: id, expected due score, member, next slot, lease, next_run_at.
_CLAIM = Lua("""
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
redis.call('HSET', KEYS[3], 'next_run_at', ARGV[6])
return 1
""")


async def claim(redis: aioredis.Redis, claims: Sequence[Claim]) -> list[bool]:
    """Claim each slot unless its due score moved (another scheduler, a PATCH); one round trip.

    Each claim is atomic on its own: two schedulers never both win one slot.
    """
    if not claims:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for c in claims:
            lease = Lease(c.schedule_id, c.slot, c.lease_expires)
            args = [c.schedule_id, c.due, lease.member, c.following, c.lease_expires, now_rfc3339(c.following)]
            await _CLAIM(
                redis, [keys.SCHEDULES_DUE, keys.SCHEDULES_INFLIGHT, keys.schedule(c.schedule_id)], args, pipe=pipe
            )
        return [bool(won) for won in await pipe.execute()]


# KEYS: schedule hash, inflight, events stream. ARGV: member, last_run_at, status, error,
# maxlen, then the event's field/value pairs (store.events.entry). Completes a slot once;
# never recreates a schedule deleted meanwhile.
_COMPLETE = Lua("""
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_run_at', ARGV[2], 'last_status', ARGV[3], 'last_error', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'run_count', 1)
if ARGV[3] == 'ok' then
  redis.call('HSET', KEYS[1], 'consecutive_failures', '0')
else
  redis.call('HINCRBY', KEYS[1], 'consecutive_failures', 1)
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 6))
return 1
""")


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
    """Record a delivered slot (ok unless `error`) with its SCHEDULE_FIRED event, once.

    False if the slot was already completed (a re-delivery) or the schedule was deleted.
    """
    status = "ok" if error is None else "error"
    payload = {
        "schedule_id": schedule_id,
        "status": status,
        "error": error,
        "message_id": message_id(schedule_id, slot),
    }
    event = events.entry("SCHEDULE_FIRED", tenant_id, workspace_id, payload)
    member = Lease(schedule_id, slot, 0).member
    args = [member, now_rfc3339(), status, error or "", max_len, *events.flat(event)]
    return bool(
        await _COMPLETE(redis, [keys.schedule(schedule_id), keys.SCHEDULES_INFLIGHT, keys.events(tenant_id)], args)
    )


async def drop_lease(redis: aioredis.Redis, schedule_id: str, slot: int) -> None:
    """Forget a slot in flight without recording it (it cannot be recorded, or its schedule is gone)."""
    await redis.zrem(keys.SCHEDULES_INFLIGHT, Lease(schedule_id, slot, 0).member)


async def quarantined_count(redis: aioredis.Redis) -> int:
    return int(await redis.scard(keys.SCHEDULES_QUARANTINED))


async def _if_unchanged(
    redis: aioredis.Redis, schedule_id: str, read_as: str, write: Callable[[Any, dict[bytes, bytes]], None]
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
            write(pipe, raw)
            await pipe.execute()
            return raw
        except WatchError:
            return None
        except ResponseError:  # a key of the wrong type: nothing to record on
            return None


async def record_error(redis: aioredis.Redis, schedule_id: str, read_as: str, error: str | None, now: float) -> bool:
    """Record a failure on a schedule read as version `read_as`; its next try is a second later.

    Returns whether it was written (not if the schedule changed or went meanwhile).
    """

    def write(pipe: Any, raw: dict[bytes, bytes]) -> None:
        key = keys.schedule(schedule_id)
        pipe.hset(key, mapping={"last_status": "error", "last_error": error or "unknown error"})
        pipe.hincrby(key, "consecutive_failures", 1)
        pipe.zadd(keys.SCHEDULES_DUE, {schedule_id: int(now) + 1}, xx=True)

    return await _if_unchanged(redis, schedule_id, read_as, write) is not None


async def quarantine(redis: aioredis.Redis, schedule_id: str, read_as: str, error: str, *, max_len: int) -> bool:
    """Take a schedule (read as version `read_as`) out of the due index until a PATCH fixes it.

    Its slots in flight are dropped, its record says `quarantined`, and its tenant gets a
    SCHEDULE_QUARANTINED event, in one transaction. A key that is no schedule record (gone,
    or not a hash) is only taken out of the indexes. Returns whether a record was marked.
    """
    inflight = await redis.zrange(keys.SCHEDULES_INFLIGHT, 0, -1)
    stuck = [m for m in inflight if m.decode().rpartition(":")[0] == schedule_id]

    def write(pipe: Any, raw: dict[bytes, bytes]) -> None:
        key = keys.schedule(schedule_id)
        pipe.zrem(keys.SCHEDULES_DUE, schedule_id)
        if stuck:
            pipe.zrem(keys.SCHEDULES_INFLIGHT, *stuck)
        pipe.sadd(keys.SCHEDULES_QUARANTINED, schedule_id)
        pipe.hset(key, mapping={"last_status": "quarantined", "last_error": error})
        pipe.hincrby(key, "consecutive_failures", 1)
        fields = decode_lenient(raw)
        tenant_id = fields.get("tenant_id", "")
        if is_id(tenant_id):
            payload = {"schedule_id": schedule_id, "error": error}
            entry = events.entry("SCHEDULE_QUARANTINED", tenant_id, fields.get("workspace_id", ""), payload)
            pipe.xadd(keys.events(tenant_id), entry, maxlen=max_len, approximate=True)

    if await _if_unchanged(redis, schedule_id, read_as, write) is not None:
        return True
    if await redis.type(keys.schedule(schedule_id)) != b"hash":
        # No record a PATCH could fix: just stop trying it.
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.SCHEDULES_DUE, schedule_id)
            if stuck:
                pipe.zrem(keys.SCHEDULES_INFLIGHT, *stuck)
            await pipe.execute()
    return False
