"""ray-cluster.yaml passes Ray's own offline validation and says what the README promises."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

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
