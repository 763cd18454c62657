"""The one way the platform opens Redis: redis-py's asyncio client with deadlines and a short retry."""

from __future__ import annotations

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff


def connect(url: str, *, timeout_s: float = 2.0) -> aioredis.Redis:
    """A client whose every command has a deadline.

    A connection found dead (Redis restarted) is retried twice within about 0.3 s, so one
    stale pooled connection does not fail a request; a real outage still raises
    ConnectionError for the recover loop (or a 503 from the API).
    """
    return aioredis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, 2.0),
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=2),
        retry_on_error=[redis.exceptions.ConnectionError],
        health_check_interval=10,
    )
