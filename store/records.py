"""Records as Redis hashes: every field a string, None as "", and the helpers to read them."""

from __future__ import annotations

import bisect
import re
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from store import keys


def new_id(shard: int | None = None) -> str:
    """32 random hex digits; with `shard`, an id in that shard (a tenant's records share its shard)."""
    raw = uuid.uuid4().hex
    if shard is None:
        return raw
    first = int(raw[:2], 16) // keys.SHARDS * keys.SHARDS + shard
    return f"{first:02x}{raw[2:]}"


def is_id(value: str) -> bool:
    """Ids are 32 lowercase hex digits (what new_id makes)."""
    return re.fullmatch(r"[0-9a-f]{32}", value) is not None


def now_rfc3339(ts: float | None = None) -> str:
    """`ts` (now if None) as RFC 3339 UTC with milliseconds, the form of every time the platform shows."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339(ts: float | None) -> str | None:
    """As `now_rfc3339`, but None stays None (a time never seen)."""
    return None if ts is None else now_rfc3339(ts)


def field(raw: dict[bytes, bytes], name: str) -> str:
    """One field of a hash read as bytes, decoded leniently; "" if it is missing."""
    return raw.get(name.encode(), b"").decode(errors="replace")


def to_hash(record: dict[str, Any]) -> dict[str, str]:
    """JSON-ish values as hash strings: None -> "", bool -> "true"/"false", numbers -> str."""
    out = {}
    for key, value in record.items():
        if value is None:
            out[key] = ""
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = str(value)
    return out


def decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    """A hash read as bytes, decoded strictly: invalid UTF-8 raises UnicodeDecodeError."""
    return {k.decode(): v.decode() for k, v in raw.items()}


def decode_lenient(raw: dict[bytes, bytes]) -> dict[str, str]:
    """A hash read as bytes, invalid UTF-8 replaced (for reading what may be corrupt)."""
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}


async def read_hashes(redis: aioredis.Redis, hash_keys: Sequence[str]) -> list[Any]:
    """HGETALL of each key in one round trip; a key of the wrong type reads as its error (an Exception)."""
    if not hash_keys:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for key in hash_keys:
            pipe.hgetall(key)
        return await pipe.execute(raise_on_error=False)


async def union(redis: aioredis.Redis, index: Callable[[int], str], shards: Sequence[int]) -> list[str]:
    """Every member of the per-shard sets `index(shard)` of `shards`, sorted; one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.smembers(index(shard))
        found = await pipe.execute()
    return sorted(member.decode() for members in found for member in members)


async def earliest(
    redis: aioredis.Redis, index: Callable[[int], str], now: float, limit: int, shards: Sequence[int]
) -> list[str]:
    """Up to `limit` members scored at or before `now` in the per-shard sorted sets `index(shard)`
    of `shards`, the lowest scores first; one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.zrangebyscore(index(shard), "-inf", now, start=0, num=limit, withscores=True)
        found = await pipe.execute()
    return [member.decode() for _, member in sorted((score, m) for rows in found for m, score in rows)[:limit]]


def optional(value: str) -> str | None:
    return value if value != "" else None


async def read_owned(redis: aioredis.Redis, key: str, tenant_id: str) -> dict[str, str] | None:
    """The hash at `key` if it exists and belongs to the tenant (bytes decoded leniently)."""
    try:
        raw = await redis.hgetall(key)
    except ResponseError:  # not a hash: nobody's record
        return None
    fields = decode_lenient(raw)
    return fields if raw and fields.get("tenant_id") == tenant_id else None


async def list_owned(
    redis: aioredis.Redis,
    index_key: str,
    key_of: Callable[[str], str],
    tenant_id: str,
    public: Callable[[dict[str, str]], dict[str, Any]],
    *,
    after: str | None = None,
    limit: int = 100,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the records listed in the tenant's index set, as the API shows them, by id:
    up to `limit` ids after `after`, and the cursor of the next page (None on the last).

    Each record is on exactly one page of a walk; one created meanwhile is on a later page
    if its id sorts after the cursor.
    """
    ids = sorted(m.decode() for m in await redis.smembers(index_key))
    start = bisect.bisect_right(ids, after) if after is not None else 0
    page = ids[start : start + limit]
    found = []
    for fields in await read_hashes(redis, [key_of(record_id) for record_id in page]):
        if isinstance(fields, dict) and fields:
            decoded = decode_lenient(fields)
            if decoded.get("tenant_id") == tenant_id:
                found.append(public(decoded))
    more = start + limit < len(ids)
    return found, page[-1] if more and page else None
