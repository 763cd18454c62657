"""Settings: defaults, and a bad value fails at start naming the key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from driver import channel_secret_key
from settings import Settings
from store.secrets import SecretBox


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.ray_address, s.ray_namespace, s.redis_url) == (None, "supervised", None)
    assert (s.api_host, s.api_port, s.data_dir) == ("127.0.0.1", 8080, Path(".data"))
    assert s.admin_token is None and s.enable_fault_injection is False
    assert s.api_node == "head"


@pytest.mark.parametrize(
    "value, node", [("head", "head"), ("10.0.0.7", "10.0.0.7"), ("fd00::7", "fd00::7"), ("AB" * 28, "ab" * 28)]
)
def test_api_node_is_the_head_an_address_or_a_node_id(value: str, node: str) -> None:
    assert Settings.from_env({"API_NODE": value}).api_node == node


def test_api_host_node_is_each_apis_own_node_address() -> None:
    s = Settings.from_env({"API_HOST": "node", "API_PORT": "8081"})
    assert s.api_host == "node" and s.api_url_on("10.0.1.7") == "http://10.0.1.7:8081"
    assert s.api_url_on("fd00::7") == "http://[fd00::7]:8081"


@pytest.mark.parametrize(
    "key, value",
    [
        ("API_PORT", "http"),
        ("API_PORT", "70000"),
        ("API_HOST", "example.com"),
        ("API_NODE", "worker-1"),
        ("API_NODE", "ab" * 27),
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
        ("CHANNEL_SECRET_KEY", "not-a-fernet-key"),
        ("TELEGRAM_API_BASE", "api.telegram.org"),
        ("SLACK_API_BASE", "ftp://slack.com/api"),
        ("TELEGRAM_POLL_TIMEOUT_S", "-1"),
        ("CHANNEL_REPLY_TIMEOUT_S", "0"),
        ("SCHEDULER_FIRES_IN_FLIGHT", "0"),
        ("TENANT_FIRES_IN_FLIGHT", "many"),
        ("TENANT_RELAYS_IN_FLIGHT", "1.5"),
        ("TENANT_MAX_WORKSPACES", "-1"),
        ("TENANT_MAX_SCHEDULES", "1e3"),
        ("TENANT_MAX_CHANNELS", "x"),
        ("TENANT_MAX_WS_CONNECTIONS", "0"),
        ("TENANT_EVENTS_PER_S", "0"),
        ("REDIS_MAXMEMORY", "lots"),
        ("REDIS_MAXMEMORY", "512kb"),
        ("REDIS_MAXMEMORY", "2tb"),
        ("SCHEDULER_REPLICAS", "0"),
        ("CHANNEL_MANAGER_REPLICAS", "-1"),
        ("LIVENESS_REPLICAS", "two"),
        ("REPLICA_CPUS", "-0.5"),
        ("SHARD_LEASE_S", "0.5"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
    ],
)
def test_bad_value_names_the_key(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=key):
        Settings.from_env({key: value})


def test_quotas_and_maxmemory_are_read() -> None:
    s = Settings.from_env(
        {
            "TENANT_MAX_WORKSPACES": "7",
            "TENANT_EVENTS_PER_S": "2.5",
            "TENANT_FIRES_IN_FLIGHT": "4",
            "SCHEDULER_FIRES_IN_FLIGHT": "64",
            "REDIS_MAXMEMORY": "512mib",
        }
    )
    assert s.quotas() == {
        "workspaces": 7,
        "schedules": 10_000,
        "channels": 100,
        "ws_connections": 100,
        "events_per_s": 2.5,
        "fires_in_flight": 4,
        "relays_in_flight": 16,
    }
    assert (s.scheduler_fires_in_flight, s.redis_maxmemory) == (64, 512 * 1024**2)
    assert Settings.from_env({"REDIS_MAXMEMORY": "2gb"}).redis_maxmemory == 2 * 1000**3
    assert Settings.from_env({"REDIS_MAXMEMORY": "1048576"}).redis_maxmemory == 1024**2
    assert Settings.from_env({}).redis_maxmemory is None  # the embedded Redis takes a quarter of the memory


def test_replicas_and_a_redis_cluster_are_read() -> None:
    s = Settings.from_env(
        {
            "SCHEDULER_REPLICAS": "3",
            "CHANNEL_MANAGER_REPLICAS": "2",
            "LIVENESS_REPLICAS": "4",
            "REPLICA_CPUS": "1.5",
            "SHARD_LEASE_S": "4",
            "REDIS_URL": "redis+cluster://127.0.0.1:7000",
        }
    )
    assert (s.scheduler_replicas, s.channel_manager_replicas, s.liveness_replicas) == (3, 2, 4)
    assert (s.shard_lease_s, s.replica_cpus, s.redis_url) == (4.0, 1.5, "redis+cluster://127.0.0.1:7000")
    d = Settings.from_env({})
    assert (d.scheduler_replicas, d.channel_manager_replicas, d.liveness_replicas, d.shard_lease_s) == (1, 1, 1, 10.0)
    assert d.replica_cpus == 0.25


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


def test_channel_settings_are_read() -> None:
    key = Fernet.generate_key().decode()
    s = Settings.from_env(
        {"CHANNEL_SECRET_KEY": key, "TELEGRAM_API_BASE": "http://127.0.0.1:9/", "SLACK_API_BASE": "http://h/api"}
    )
    assert (s.channel_secret_key, s.telegram_api_base, s.slack_api_base) == (key, "http://127.0.0.1:9", "http://h/api")
    assert key not in repr(s)


def test_the_channel_key_is_generated_once_with_mode_0600_and_a_bad_one_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    key = channel_secret_key(settings)
    path = tmp_path / "channel_secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert channel_secret_key(settings) == key  # the same key on the next start
    sealed = SecretBox(key).seal({"bot_token": "t"})
    assert "bot_token" not in sealed  # sealed, not merely encoded
    assert SecretBox(channel_secret_key(settings)).open(sealed) == {"bot_token": "t"}  # the same key opens it
    with pytest.raises(ValueError, match="cannot be decrypted"):
        SecretBox(Fernet.generate_key().decode()).open(sealed)  # another key does not
    path.write_text("damaged\n")
    with pytest.raises(RuntimeError, match="channel_secret_key"):
        channel_secret_key(settings)  # never replaced: every sealed secret would be lost
    assert path.read_text() == "damaged\n"
