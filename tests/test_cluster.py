"""cluster.yaml is accepted by Ray's own launcher validation (what `ray up` runs)."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO


def validated(path):
    config = yaml.safe_load(path.read_text())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return config, prepared


def test_cluster_yaml_passes_ray_validation():
    config, prepared = validated(REPO / "cluster.yaml")
    types = prepared["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}  # trials run on GPU workers only
    assert types["gpu_worker"]["min_workers"] == 0 and types["gpu_worker"]["max_workers"] >= 1
    assert prepared["idle_timeout_minutes"] > 0 and prepared["max_workers"] >= 1
    assert config["file_mounts"]["~/handreid-search"] == "."  # this commit on every node
    assert any("pip install -q -e ~/handreid-search" in c for c in config["setup_commands"])
    assert any("HANDREID_STORAGE" in c for c in config["setup_commands"])


def test_local_provider_variant_passes_ray_validation():
    _config, prepared = validated(REPO / "cluster.local.yaml")
    assert prepared["provider"]["type"] == "local"


def test_validation_rejects_a_broken_config():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["min_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError, match="many"):
        validate_config(prepare_config(copy.deepcopy(config)))
