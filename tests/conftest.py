"""Session fixtures: one real redis-server and one local Ray for the whole test run."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from store.embedded import EmbeddedRedis, free_port
from tests.chat_apis import ChatApis
from tests.support import Platform, start_platform

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


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
def platform(ray_session: dict, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Health + API deployed once per test module, in its own namespace."""
    deployed = start_platform(redis_url, tmp_path_factory.mktemp("data"))
    yield deployed
    deployed.close()


@pytest.fixture(scope="module")
def apis() -> Iterator[ChatApis]:
    """Loopback Telegram Bot API and Slack Web API for a module's channels."""
    server = ChatApis()
    yield server
    server.stop()
