"""Embedded redis-server: AOF and expiry events on, same port across runs, adoption."""

from __future__ import annotations

from pathlib import Path

import redis

from store.embedded import EmbeddedRedis, answers
from tests.support import wait_for


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
