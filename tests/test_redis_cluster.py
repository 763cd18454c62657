"""The local Redis Cluster of tests/redis_cluster.py: slots split over three primaries, CROSSSLOT
refused and hash tags honoured, flush() empties every node, stop() leaves no process, and a port
taken after being chosen costs a retry, not a failure."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, RedisClusterException

import tests.redis_cluster
from store.embedded import free_port, port_is_free
from tests.redis_cluster import BUS_PORT_OFFSET, LocalRedisCluster


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port a stranger listens on, whose cluster bus port is free."""
    while True:
        port = free_port()
        if port + BUS_PORT_OFFSET <= 65535 and port_is_free(port + BUS_PORT_OFFSET):
            break
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield port


def test_three_primaries_own_the_slots_flush_empties_them_and_stop_leaves_no_process(
    tmp_path: Path, held_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first port offered is held by a stranger: start() must retry on new ports. Checked here
    # rather than in a test of its own because each cluster start costs 2 s or more.
    offered = itertools.chain([held_port], iter(free_port, None))
    monkeypatch.setattr(tests.redis_cluster, "free_port", lambda: next(offered))
    cluster = LocalRedisCluster(tmp_path)
    with cluster:
        ports, pids = cluster.ports, cluster.pids
        assert len(set(ports)) == 3
        assert held_port not in ports
        assert (tmp_path / f"node-{held_port}").is_dir()
        assert cluster.url == f"redis+cluster://127.0.0.1:{ports[0]}"
        assert cluster.node_urls == [f"redis://127.0.0.1:{port}" for port in ports]
        client = RedisCluster(host="127.0.0.1", port=ports[0])
        try:
            ranges = client.cluster_slots()
            assert {primary["primary"][1] for primary in ranges.values()} == set(ports)
            assert sum(end - start + 1 for start, end in ranges) == 16384

            def owner(slot: int) -> int:
                return next(v["primary"][1] for (start, end), v in ranges.items() if start <= slot <= end)

            key_on: dict[int, str] = {}
            for i in itertools.count():
                key_on.setdefault(owner(client.keyslot(f"key:{i}")), f"key:{i}")
                if len(key_on) == 3:
                    break
            for port, key in key_on.items():
                assert client.get_node_from_key(key).port == port
                assert client.set(key, str(port))
            for port, key in key_on.items():
                with redis.Redis(host="127.0.0.1", port=port) as node:
                    assert node.get(key) == str(port).encode()
                    assert node.dbsize() == 1

            a, b = list(key_on.values())[:2]
            # redis-py refuses a multi-slot MSET before sending it; sent to a node anyway, the server refuses it too.
            with pytest.raises(RedisClusterException, match="same key slot"):
                client.mset({a: "1", b: "2"})
            with pytest.raises(ClusterCrossSlotError):
                client.execute_command("MSET", a, "1", b, "2", target_nodes=client.get_node_from_key(a))

            one, two = "{x}:one", "{x}:two"
            assert client.keyslot(one) == client.keyslot(two)
            with client.pipeline(transaction=True) as pipe:
                pipe.set(one, "a").incr(two).execute_command("MGET", one, two)
                _, incremented, values = pipe.execute()
            assert (incremented, values) == (1, [b"a", b"1"])

            cluster.flush()
            for url in cluster.node_urls:
                with redis.Redis.from_url(url) as node:
                    assert node.dbsize() == 0
        finally:
            client.close()
    assert not any(psutil.pid_exists(pid) for pid in pids)
