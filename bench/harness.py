"""Shared set-up for benchmarks: a local Ray, a real redis-server, a deployed platform."""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # Ray workers import actors/ from the driver's directory

import ray  # noqa: E402
import redis  # noqa: E402

from store.embedded import EmbeddedRedis  # noqa: E402
from tests.support import Platform, start_platform  # noqa: E402


@contextlib.contextmanager
def local_ray(nodes: int = 1) -> Iterator[None]:
    """A local Ray of 2 CPUs; with `nodes` > 1, a cluster of that many nodes on this machine
    (`ray.cluster_utils.Cluster`: a head of 2 CPUs and workers of 1, each its own raylet)."""
    if nodes == 1:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield
        finally:
            ray.shutdown()
        return
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        yield
    finally:
        ray.shutdown()
        cluster.shutdown()


@contextlib.contextmanager
def redis_server() -> Iterator[EmbeddedRedis]:
    with tempfile.TemporaryDirectory(prefix="bench-redis") as data:
        server = EmbeddedRedis(Path(data))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def platform(subsystems: Sequence[Any] = (), nodes: int = 1, **overrides: Any) -> Iterator[Platform]:
    """Ray (of `nodes` nodes) + Redis + health and API actors (and `subsystems`, with settings
    `overrides`), torn down afterwards."""
    with local_ray(nodes), redis_server() as server, tempfile.TemporaryDirectory(prefix="bench-data") as data:
        deployed = start_platform(server.url, Path(data), subsystems=subsystems, **overrides)
        try:
            yield deployed
        finally:
            deployed.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float], unit: str = "ms", scale: float = 1000.0) -> str:
    return (
        f"p50 {percentile(values, 50) * scale:.2f} {unit}, p99 {percentile(values, 99) * scale:.2f} {unit}, "
        f"mean {statistics.fmean(values) * scale:.2f} {unit} (n={len(values)})"
    )


def ratios(ours: list[float], theirs: list[float]) -> str:
    """`ours` over `theirs` at the median and the 99th percentile."""
    p50 = percentile(ours, 50) / percentile(theirs, 50)
    p99 = percentile(ours, 99) / percentile(theirs, 99)
    return f"p50 {p50:.2f}x, p99 {p99:.2f}x"


def sync_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)
