"""Settings: defaults, and a bad value fails at start naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from settings import Settings


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.ray_address, s.ray_namespace, s.redis_url) == (None, "supervised", None)
    assert (s.api_host, s.api_port, s.data_dir) == ("127.0.0.1", 8080, Path(".data"))
    assert s.admin_token is None and s.enable_fault_injection is False


@pytest.mark.parametrize(
    "key, value",
    [
        ("API_PORT", "http"),
        ("API_PORT", "70000"),
        ("API_HOST", "example.com"),
        ("REDIS_URL", "localhost:6379"),
        ("RAY_NAMESPACE", "a b"),
        ("ENABLE_FAULT_INJECTION", "maybe"),
        ("ADMIN_TOKEN", "short"),
        ("DRAIN_TIMEOUT_S", "-1"),
        ("METRICS_EXPORT_PORT", "x"),
        ("EVENTS_MAX_PER_TENANT", "0"),
        ("FIRE_TIMEOUT_S", "soon"),
        ("WORKSPACE_TTL_S", "-5"),
        ("WS_QUEUE_SIZE", "0"),
        ("WS_PING_INTERVAL_S", "never"),
        ("WS_PING_TIMEOUT_S", "0"),
    ],
)
def test_bad_value_names_the_key(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=key):
        Settings.from_env({key: value})


def test_values_are_read() -> None:
    s = Settings.from_env(
        {"API_PORT": "9000", "ENABLE_FAULT_INJECTION": "1", "REDIS_URL": "redis://127.0.0.1:1/0", "DATA_DIR": "/x"}
    )
    assert (s.api_port, s.enable_fault_injection, s.redis_url, s.data_dir) == (
        9000,
        True,
        "redis://127.0.0.1:1/0",
        Path("/x"),
    )
