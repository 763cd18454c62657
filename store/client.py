"""The one way the platform opens Redis: redis-py's asyncio client with deadlines and a short retry."""

from __future__ import annotations

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

MAX_CONNECTIONS = 100


def connect(url: str, *, timeout_s: float = 2.0) -> aioredis.Redis:
    """A client whose every command has a deadline.

    A connection found dead (Redis restarted) is retried twice within about 0.3 s, so one
    stale pooled connection does not fail a request; a real outage still raises
    ConnectionError for the recover loop (or a 503 from the API). The pool holds at most
    MAX_CONNECTIONS; a burst beyond them waits for a free one (up to `timeout_s`) instead
    of failing with "Too many connections".
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, 2.0),
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=2),
        retry_on_error=[redis.exceptions.ConnectionError],
        health_check_interval=10,
    )
    return aioredis.Redis.from_pool(pool)


async def memory(redis: aioredis.Redis) -> dict[str, object]:
    """The server's memory as operators need it: used, its `maxmemory` (0: none) and whether it is full."""
    info = await redis.info("memory")
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    return {"used_bytes": used, "max_bytes": limit, "full": bool(limit) and used >= limit}
