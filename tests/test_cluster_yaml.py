"""ray-cluster.yaml passes Ray's own offline validation and says what the README promises."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from settings import Settings

CONFIG = Path(__file__).resolve().parent.parent / "ray-cluster.yaml"


def test_cluster_yaml_is_valid_for_the_launcher() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    prepared = prepare_config(config)
    validate_config(prepared)
    assert set(prepared["available_node_types"]) == {"head", "worker"}
    assert prepared["head_node_type"] == "head"
    head = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-port=8265" in head and "--metrics-export-port=" in head
    assert "python driver.py" in head


def test_validation_catches_a_bad_config() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    config["available_node_types"]["head"]["not_a_field"] = 1
    try:
        validate_config(prepare_config(config))
    except Exception as exc:  # the validator's own error type (jsonschema ValidationError)
        assert "not_a_field" in str(exc)
    else:
        raise AssertionError("an unknown field passed validation")


def test_the_job_runs_an_api_on_every_node_on_its_own_address_and_redis_on_the_heads(tmp_path: Path) -> None:
    """The head's job submission, run by bash as the launcher runs it, with `ray` and `hostname` stubbed."""
    config = prepare_config(yaml.safe_load(CONFIG.read_text()))
    command = next(c for c in config["head_start_ray_commands"] if "ray job submit" in c)
    (tmp_path / "platform").mkdir()
    (tmp_path / "platform-data").mkdir()
    (tmp_path / "platform-data" / "redis_password").write_text("secret\n")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    _stub(stubs / "hostname", 'echo "10.0.1.5 172.17.0.1"')  # `hostname -I`: the private address first
    _stub(stubs / "ray", f'{sys.executable} -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"')
    result = subprocess.run(
        ["bash", "-c", command],
        env={"HOME": str(tmp_path), "PATH": f"{stubs}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    args = json.loads(result.stdout)
    env = json.loads(args[args.index("--runtime-env-json") + 1])["env_vars"]
    settings = Settings.from_env(env)
    assert (settings.api_host, settings.api_port, settings.api_node, settings.api_per_node) == (
        "node",
        8080,
        "head",
        True,
    )
    assert settings.redis_url == "redis://:secret@10.0.1.5:6380/0"
    assert (settings.scheduler_replicas, settings.channel_manager_replicas, settings.liveness_replicas) == (3, 3, 3)
    assert args[-2:] == ["python", "driver.py"]


def test_the_security_group_lets_the_api_port_in_from_the_vpc_only() -> None:
    rules = yaml.safe_load(CONFIG.read_text())["provider"]["security_group"]["IpPermissions"]
    api = [r for r in rules if r["IpProtocol"] == "tcp" and r["FromPort"] <= 8080 <= r["ToPort"]]
    assert api, rules
    ranges = [ipaddress.ip_network(r["CidrIp"]) for rule in api for r in rule["IpRanges"]]
    assert ranges and all(network.is_private for network in ranges)


def _stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
