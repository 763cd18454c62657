"""Embedded redis-server: AOF and expiry events on, same port across runs, adoption."""

from __future__ import annotations

import stat
from pathlib import Path

import psutil
import pytest
import redis

from store.embedded import FIXED_PORTS_FROM, EmbeddedRedis, answers, ephemeral_ports, free_port, port_is_free
from tests.support import stranger_redis, wait_for


def test_free_ports_lie_outside_the_kernels_ephemeral_range() -> None:
    """A server that restarts binds its port again: one from the ephemeral range could be taken
    meanwhile by any process binding port 0 (a Ray gRPC server took an API's that way)."""
    low = ephemeral_ports()[0]
    ports = [free_port() for _ in range(200)]
    assert all(FIXED_PORTS_FROM <= p < low for p in ports), sorted(p for p in ports if not FIXED_PORTS_FROM <= p < low)
    assert all(port_is_free(p) for p in ports[:20])
    assert len(set(ports)) > 150  # spread, not one port handed out again and again


def test_settings_port_reuse_and_adoption(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    url = first.start()
    try:
        client = redis.Redis.from_url(url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert set(client.config_get("notify-keyspace-events")["notify-keyspace-events"]) >= {"E", "x"}
        client.set("kept", "1")
        # A second run on the same DATA_DIR (the first driver died hard) adopts the server.
        second = EmbeddedRedis(tmp_path)
        assert second.start() == url
        second.stop()
        wait_for(lambda: not answers(url), 10, what="adopted server stopped")
        # The next start comes back on the same port with the data (AOF).
        third = EmbeddedRedis(tmp_path)
        assert third.start() == url
        assert redis.Redis.from_url(url).get("kept") == b"1"
        third.stop()
    finally:
        first.stop()


def test_it_requires_its_password_kept_0600_and_never_on_its_command_line(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    url = server.start()
    try:
        password_file = tmp_path / "redis_password"
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "redis.conf").stat().st_mode) == 0o600
        password = password_file.read_text().strip()
        assert len(password) >= 32 and f":{password}@" in url
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()  # no password: refused
        assert server.process is not None
        assert password not in " ".join(psutil.Process(server.process.pid).cmdline())
    finally:
        server.stop()


def test_a_server_on_the_recorded_port_without_the_password_is_never_used(tmp_path: Path) -> None:
    """Someone else's redis-server, plain, where ours was: a clear start error, and nothing written to it."""
    with stranger_redis(tmp_path) as plain:
        with pytest.raises(RuntimeError, match="does not accept this platform's Redis password"):
            EmbeddedRedis(tmp_path).start()
        assert plain.dbsize() == 0
        # Only a handshake and pings reached it: no write, no read of data.
        assert {k.removeprefix("cmdstat_") for k in plain.info("commandstats")} <= {
            "ping",
            "auth",
            "info",
            "hello",
            "dbsize",
            "client",
        }
