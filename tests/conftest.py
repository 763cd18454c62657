"""Session fixtures: one real redis-server and one local Ray for the whole test run."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import redis.asyncio as aioredis

from store.client import connect
from store.embedded import EmbeddedRedis, free_port
from tests.a2a_agent import A2AAgent
from tests.chat_apis import ChatApis
from tests.redis_cluster import LocalRedisCluster
from tests.support import Platform, start_platform

ROOT = Path(__file__).resolve().parent.parent
DATABASES = 512


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port(), databases=DATABASES)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fresh_redis(redis_server: EmbeddedRedis) -> Callable[[], str]:
    """Hands out URLs of databases of the session's redis-server that nothing has used yet.

    Each platform (and each store test) gets its own, so no result depends on what another
    test left behind, nor on the order the tests run in.
    """
    numbers = itertools.count(1)

    def fresh() -> str:
        db = next(numbers)
        assert db < DATABASES, f"more than {DATABASES - 1} databases asked for: raise DATABASES"
        return redis_server.database_url(db)

    return fresh


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-cluster",
        action="store_true",
        help="run each module's platform (`redis_url`) on the session's local Redis Cluster",
    )


@pytest.fixture(scope="module")
def redis_url(request: pytest.FixtureRequest, fresh_redis: Callable[[], str]) -> str:
    """A database of its own for the module; with --redis-cluster, the session's Redis Cluster,
    emptied first (the module before has stopped its platform)."""
    if request.config.getoption("--redis-cluster"):
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return cluster.url
    return fresh_redis()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A local 3-primary Redis Cluster for the session (from the same redis-server binary)."""
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["redis", "cluster"])
async def store(request: pytest.FixtureRequest, fresh_redis: Callable[[], str]) -> AsyncIterator[aioredis.Redis]:
    """A client for one test of store/ verbs: of a database of its own on the session's Redis, and
    again of the session's Redis Cluster, emptied first (a cluster has one database).

    A test of what only a single Redis can hold (a store written before the sharded layout)
    is marked `single_redis`.
    """
    if request.param == "cluster":
        if request.node.get_closest_marker("single_redis"):
            pytest.skip("what it tests can only be on a single Redis")
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        url = cluster.url
    else:
        url = fresh_redis()
    client = connect(url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[dict[str, Any]]:
    """A local Ray started for this session only (never one found on the machine)."""
    os.chdir(ROOT)  # workers import actors/ and tests/ from the driver's directory
    metrics_port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        namespace="tests",
        logging_level=logging.WARNING,
        _metrics_export_port=metrics_port,
    )
    yield {"metrics_port": metrics_port, "gcs_address": ray.get_runtime_context().gcs_address}
    ray.shutdown()


@pytest.fixture(scope="module")
def platform(
    ray_session: dict, redis_url: str, apis: ChatApis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """Health + API deployed once per test module, in its own namespace (Telegram and Slack: `apis`)."""
    deployed = start_platform(
        redis_url, tmp_path_factory.mktemp("data"), telegram_api_base=apis.telegram_base, slack_api_base=apis.slack_base
    )
    yield deployed
    deployed.close()


@pytest.fixture(scope="module")
def agent() -> Iterator[A2AAgent]:
    """An a2a-sdk agent on loopback for a module's workspaces (modules that need another kind define their own)."""
    server = A2AAgent().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def apis() -> Iterator[ChatApis]:
    """Loopback Telegram Bot API and Slack Web API for a module's channels."""
    server = ChatApis()
    yield server
    server.stop()
