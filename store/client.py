"""The one way the platform opens Redis: redis-py's asyncio client with deadlines and a short retry.

`REDIS_URL` names a single Redis (`redis://host:port/db`, `rediss://...`) or a Redis
Cluster (`redis+cluster://host:port`, `rediss+cluster://...`: any one node; the others are
found from it). The key layout (store.keys) keeps every script and transaction in one hash
slot, so the same code runs on both.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

MAX_CONNECTIONS = 100
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def connect(url: str, *, timeout_s: float = 2.0) -> aioredis.Redis:
    """A client whose every command has a deadline.

    A connection found dead (Redis restarted) is retried twice within about 0.3 s, so one
    stale pooled connection does not fail a request; a real outage still raises
    ConnectionError for the recover loop (or a 503 from the API). A single Redis's pool
    holds at most MAX_CONNECTIONS; a burst beyond them waits for a free one (up to
    `timeout_s`) instead of failing with "Too many connections". A Cluster client holds
    at most MAX_CONNECTIONS per node, and a burst beyond them fails at once
    (MaxConnectionsError: redis-py's cluster client does not wait for one).
    """
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=2)
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": min(timeout_s, 2.0),
        "retry": retry,
        "retry_on_error": [redis.exceptions.ConnectionError],
        "health_check_interval": 10,
    }
    scheme, _, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        single_url = f"{CLUSTER_SCHEMES[scheme]}://{rest}"
        return RedisCluster.from_url(single_url, max_connections=MAX_CONNECTIONS, **common)  # type: ignore[return-value]
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=timeout_s, **common)
    return aioredis.Redis.from_pool(pool)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


async def memory(client: aioredis.Redis) -> dict[str, object]:
    """The server's memory as operators need it: used, its `maxmemory` (0: none) and whether it is full.

    On a Cluster: the sums over its primaries, full if any of them is (its slots refuse writes).
    """
    if is_cluster(client):
        found = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
        infos = list(found.values()) if found and isinstance(next(iter(found.values())), dict) else [found]
    else:
        infos = [await client.info("memory")]
    used = sum(int(info.get("used_memory", 0)) for info in infos)
    limit = sum(int(info.get("maxmemory", 0)) for info in infos)
    full = any(int(i.get("maxmemory", 0)) and int(i.get("used_memory", 0)) >= int(i.get("maxmemory", 0)) for i in infos)
    return {"used_bytes": used, "max_bytes": limit, "full": full}


async def pubsub(client: aioredis.Redis) -> Any:
    """A subscriber of `client` that skips (un)subscribe confirmations; on a Cluster, made once the
    client knows its nodes (a PUBLISH on any node reaches the subscribers of every node)."""
    if is_cluster(client):
        await client.initialize()  # type: ignore[attr-defined]
    return client.pubsub(ignore_subscribe_messages=True)


async def notifications(client: aioredis.Redis, event: str) -> AsyncIterator[str]:
    """Names of the keys of each `event` keyspace notification (`expired`, ...), as they come.

    A Cluster sends each node's notifications to that node's subscribers only, so this
    listens to every primary known when it starts.
    """
    if is_cluster(client):
        await client.initialize()  # type: ignore[attr-defined]  # (the nodes are known from then on)
        nodes = client.get_primaries()  # type: ignore[attr-defined]
        accepted = inspect.signature(aioredis.Redis.__init__).parameters
        clients = [aioredis.Redis(**{k: v for k, v in n.connection_kwargs.items() if k in accepted}) for n in nodes]
        channel = f"__keyevent@0__:{event}"
    else:
        clients = [client]
        channel = f"__keyevent@{client.connection_pool.connection_kwargs.get('db', 0)}__:{event}"
    subscriptions = [c.pubsub(ignore_subscribe_messages=True) for c in clients]
    try:
        for subscription in subscriptions:
            await subscription.subscribe(channel)
        wait_s = 1.0 / len(subscriptions)
        while True:
            for subscription in subscriptions:
                message = await subscription.get_message(timeout=wait_s)
                if message is not None:
                    yield message["data"].decode(errors="replace")
    finally:
        for subscription in subscriptions:
            await subscription.aclose()
        if is_cluster(client):
            await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
