"""Tenant event log: one Redis stream per tenant, `events:{tenant_id}` (contract)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from store import client, keys
from store.keys import shard_of
from store.quotas import TOKEN_BUCKET, QuotaExceeded
from store.records import now_rfc3339
from store.scripts import Lua

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


def flat(fields: Mapping[str, str]) -> list[str]:
    """An entry's field/value items in a row, as a Lua script takes them in ARGV (for XADD)."""
    return [item for pair in fields.items() for item in pair]


MAX_STREAM_BYTES = 100 * 1024 * 1024  # a tenant's stream, its fields and values counted

# append_event(stream, size key, max entries, first): XADD ARGV[first..] to the stream, then
# trim the oldest entries, exactly, until it holds at most `max_len` entries and
# MAX_STREAM_BYTES bytes. Its size is kept in the size key (bytes, added), so knowing it
# reads no entry; an entry is read once, when it is trimmed, to take its size off. Every
# script and transaction that appends an event goes through it.
APPEND_FN = """
local function append_event(stream, size, max_len, first)
  local added = 0
  for i = first, #ARGV do added = added + #ARGV[i] end
  local id = redis.call('XADD', stream, '*', unpack(ARGV, first))
  redis.call('HINCRBY', size, 'added', 1)
  local bytes = redis.call('HINCRBY', size, 'bytes', added)
  local len = redis.call('XLEN', stream)
  while len > max_len or bytes > MAX_BYTES do
    local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 100)
    local last = nil
    for _, entry in ipairs(oldest) do
      if len <= max_len and bytes <= MAX_BYTES then break end
      for _, v in ipairs(entry[2]) do bytes = bytes - #v end
      len = len - 1
      last = entry[1]
    end
    if last == nil then break end
    local ms, seq = string.match(last, '(%d+)-(%d+)')
    redis.call('XTRIM', stream, 'MINID', ms .. '-' .. string.format('%d', tonumber(seq) + 1))
  end
  if bytes < 0 then bytes = 0 end
  redis.call('HSET', size, 'bytes', bytes)
  return id
end
""".replace("MAX_BYTES", str(MAX_STREAM_BYTES))

# KEYS: the stream, its size key. ARGV: max entries, the entry's fields. For transactions.
APPEND = Lua(APPEND_FN + "return append_event(KEYS[1], KEYS[2], tonumber(ARGV[1]), 2)")

# KEYS: the stream, the tenant's rate bucket, the stream's size key. ARGV: rate, burst, max
# entries, the entry's fields. Time is Redis's own, so every API process shares one clock and
# one bucket per tenant.
_APPEND = Lua(
    TOKEN_BUCKET
    + APPEND_FN
    + """
local t = redis.call('TIME')
local wait = take(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(t[1]) + tonumber(t[2]) / 1e6, 1)
if wait ~= 0 then return {0, wait} end
return {1, append_event(KEYS[1], KEYS[3], tonumber(ARGV[3]), 4)}
"""
)


async def append_in(redis: aioredis.Redis, pipe: Any, tenant_id: str, fields: Mapping[str, str], max_len: int) -> None:
    """Queue, on a pipeline or transaction of `redis`, the append of one event (see APPEND_FN)."""
    await APPEND(redis, [keys.events(tenant_id), keys.events_size(tenant_id)], [max_len, *flat(fields)], pipe=pipe)


BURST_SECONDS = 10  # a tenant may post this many seconds' worth of its rate at once


async def append(
    redis: aioredis.Redis,
    event: str,
    tenant_id: str,
    workspace_id: str | None,
    payload: Any,
    *,
    max_len: int,
    per_s: float,
) -> str:
    """Append one event a tenant posts, at most `per_s` a second (bursts to 10x); the stream is
    capped near `max_len` (the oldest are dropped). QuotaExceeded, with the seconds to wait,
    when the tenant is over its rate: nothing is stored."""
    fields = entry(event, tenant_id, workspace_id, payload)
    script_keys = [keys.events(tenant_id), keys.tenant_event_rate(tenant_id), keys.events_size(tenant_id)]
    taken, found = await _APPEND(redis, script_keys, [per_s, per_s * BURST_SECONDS, max_len, *flat(fields)])
    if not taken:
        raise QuotaExceeded("events_per_s", per_s, retry_after_s=float(found))
    return found.decode()


# A stream id as this platform hands it out: "<milliseconds>-<sequence>".
STREAM_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
MAX_ID_PART = 2**64 - 1
EventKey = tuple[int, int]


def parse_id(stream_id: str) -> EventKey | None:
    """A stream id as a comparable (ms, seq) pair; None if it is not a full, in-range id."""
    match = STREAM_ID.fullmatch(stream_id)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    if ms > MAX_ID_PART or seq > MAX_ID_PART:
        return None
    return ms, seq


def envelope(tenant_id: str, stream_id: str, fields: Mapping[bytes, bytes]) -> str | None:
    """The contract's event JSON for one stream entry; None for an entry this platform did not write."""
    try:
        if fields[b"tenant_id"].decode() != tenant_id:
            return None
        return json.dumps(
            {
                "id": stream_id,
                "event": fields[b"event"].decode(),
                "tenant_id": tenant_id,
                "workspace_id": fields.get(b"workspace_id", b"").decode() or None,
                "timestamp": fields[b"timestamp"].decode(),
                "payload": json.loads(fields[b"payload"]),
            },
            separators=(",", ":"),
        )
    except (KeyError, ValueError):  # missing field, bad UTF-8 or bad JSON (UnicodeDecodeError is a ValueError)
        return None


def envelopes(tenant_id: str, entries: Entries) -> tuple[list[tuple[str, str]], list[str]]:
    """Each read entry as (stream id, event JSON), and the ids of those this platform did not write."""
    out: list[tuple[str, str]] = []
    malformed: list[str] = []
    for raw_id, fields in entries:
        stream_id = raw_id.decode()
        text = envelope(tenant_id, stream_id, fields)
        if text is None:
            malformed.append(stream_id)
        else:
            out.append((stream_id, text))
    return out, malformed


async def head(redis: aioredis.Redis, tenant_id: str) -> str | None:
    """The id of the tenant's newest event, or None for an empty stream."""
    newest = await redis.xrevrange(keys.events(tenant_id), count=1)
    return newest[0][0].decode() if newest else None


async def after(redis: aioredis.Redis, tenant_id: str, stream_id: str, count: int) -> list[tuple[str, Any]]:
    """Up to `count` entries that come after `stream_id`, oldest first."""
    if parse_id(stream_id) == (MAX_ID_PART, MAX_ID_PART):
        return []  # nothing can come after the largest id (and Redis refuses the range)
    entries = await redis.xrange(keys.events(tenant_id), min=f"({stream_id}", max="+", count=count)
    return [(raw_id.decode(), fields) for raw_id, fields in entries]


async def heads(redis: aioredis.Redis, tenant_ids: Sequence[str]) -> dict[str, str]:
    """Each tenant's newest event id ("0-0" for an empty stream, or a key that is no stream), in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for tenant_id in tenant_ids:
            pipe.xrevrange(keys.events(tenant_id), count=1)
        found = await pipe.execute(raise_on_error=False)
    return {
        t: newest[0][0].decode() if isinstance(newest, list) and newest else "0-0"
        for t, newest in zip(tenant_ids, found, strict=True)
    }


Entries = list[tuple[bytes, dict[bytes, bytes]]]


class StreamReader:
    """Blocking reads of many tenants' streams after their positions.

    On a single Redis each read is one XREAD of every stream. A Redis Cluster refuses an
    XREAD whose streams are in several slots, so there each shard's streams get their own
    XREAD, and one still waiting when another returns is kept for the next read: one
    shard's news never waits for another's, and no read is thrown away. A tenant added to a
    shard whose read is under way is read from the next one (within `block_ms`).
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._waiting: dict[int, asyncio.Task[list[tuple[str, Entries]]]] = {}

    async def read(self, positions: Mapping[str, str], *, count: int, block_ms: int) -> list[tuple[str, Entries]]:
        """(tenant, entries) for each tenant with news; waits up to `block_ms` for some.

        Raises redis ResponseError (WRONGTYPE) if one tenant's key is not a stream: `kinds` finds which.
        """
        if not positions and not self._waiting:
            # Nothing to read: wait as XREAD would, so a caller's loop never spins (no tenant yet).
            await asyncio.sleep(block_ms / 1000)
            return []
        if not client.is_cluster(self.redis):
            return await self._xread(positions, count, block_ms)
        groups: dict[int, dict[str, str]] = {}
        for tenant_id, position in positions.items():
            groups.setdefault(shard_of(tenant_id), {})[tenant_id] = position
        for shard, group in groups.items():
            if shard not in self._waiting:
                self._waiting[shard] = asyncio.ensure_future(self._xread(group, count, block_ms))
        await asyncio.wait(self._waiting.values(), return_when=asyncio.FIRST_COMPLETED)
        found: list[tuple[str, Entries]] = []
        error: BaseException | None = None
        for shard, task in list(self._waiting.items()):
            if task.done():
                del self._waiting[shard]
                if task.exception() is not None:
                    error = task.exception()
                else:
                    found += [(t, entries) for t, entries in task.result() if t in positions]
        if error is not None:
            raise error
        return found

    async def _xread(self, positions: Mapping[str, str], count: int, block_ms: int) -> list[tuple[str, Entries]]:
        streams = {keys.events(t): position for t, position in positions.items()}
        reply = await self.redis.xread(streams, count=count, block=block_ms)
        return [(keys.events_tenant(raw_key.decode()), entries) for raw_key, entries in reply or ()]

    def cancel(self) -> None:
        """Stop the reads still waiting (their positions are read again next time)."""
        for task in self._waiting.values():
            task.cancel()
        self._waiting.clear()


async def read_new(
    redis: aioredis.Redis, positions: Mapping[str, str], *, count: int, block_ms: int
) -> list[tuple[str, Entries]]:
    """One read of a StreamReader of its own (see there)."""
    reader = StreamReader(redis)
    try:
        return await reader.read(positions, count=count, block_ms=block_ms)
    finally:
        reader.cancel()


async def kinds(redis: aioredis.Redis, tenant_ids: Sequence[str]) -> dict[str, str]:
    """The Redis type of each tenant's events key ("stream", "none" when empty, or what corrupts it)."""
    async with redis.pipeline(transaction=False) as pipe:
        for tenant_id in tenant_ids:
            pipe.type(keys.events(tenant_id))
        types = await pipe.execute()
    return {t: raw.decode() if isinstance(raw, bytes) else str(raw) for t, raw in zip(tenant_ids, types, strict=True)}


async def counts(redis: aioredis.Redis, tenant_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Each tenant's (events ever appended, events held now), from its size key and XLEN, in one
    round trip: lag is a difference of counts, and no entry is read to know it."""
    async with redis.pipeline(transaction=False) as pipe:
        for tenant_id in tenant_ids:
            pipe.hget(keys.events_size(tenant_id), "added")
            pipe.xlen(keys.events(tenant_id))
        found = await pipe.execute(raise_on_error=False)
    out = {}
    for i, tenant_id in enumerate(tenant_ids):
        added, held = found[2 * i], found[2 * i + 1]
        out[tenant_id] = (
            int(added) if isinstance(added, bytes) and added.isdigit() else 0,
            held if isinstance(held, int) else 0,
        )
    return out


async def page_size(redis: aioredis.Redis, tenant_id: str, budget: int, most: int) -> int:
    """How many entries of the tenant's stream make about `budget` bytes (its size key over its
    length: the mean entry), between 1 and `most`; read once per replay, no entry read."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.events_size(tenant_id), "bytes")
        pipe.xlen(keys.events(tenant_id))
        size, held = await pipe.execute(raise_on_error=False)
    if not isinstance(size, bytes) or not size.isdigit() or not isinstance(held, int) or held <= 0:
        return most
    return max(1, min(most, budget * held // max(int(size), 1)))


def stream_name(tenant_id: str) -> str:
    """The tenant's stream key, for messages that name it."""
    return keys.events(tenant_id)
