"""The health registry in Redis: registrations and records as JSON, so a HealthActor restart loses nothing."""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

from store import keys


async def load(redis: aioredis.Redis, namespace: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(registrations, records), each by subsystem name, as their JSON."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.health_expected(namespace))
        pipe.hgetall(keys.health_records(namespace))
        expected, records = await pipe.execute()
    return {k.decode(): v for k, v in expected.items()}, {k.decode(): v for k, v in records.items()}


async def save(redis: aioredis.Redis, namespace: str, changed: Mapping[str, tuple[str | None, str | None]]) -> None:
    """Write each changed name's (registration, record) JSON; None deletes it. One round trip."""
    expected_key, records_key = keys.health_expected(namespace), keys.health_records(namespace)
    async with redis.pipeline(transaction=False) as pipe:
        for name, (expectation, record) in changed.items():
            if expectation is None:
                pipe.hdel(expected_key, name)
            else:
                pipe.hset(expected_key, name, expectation)
            if record is None:
                pipe.hdel(records_key, name)
            else:
                pipe.hset(records_key, name, record)
        await pipe.execute()
