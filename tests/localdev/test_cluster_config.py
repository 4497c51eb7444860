"""The local cluster's configuration (e2e/cluster/cluster.py), checked without starting it."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

CLUSTER_PY = Path(__file__).resolve().parents[2] / "e2e" / "cluster" / "cluster.py"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """cluster.py loaded as a module with an empty cache directory."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KUBETIER_CACHE", str(tmp_path_factory.mktemp("cache")))
    spec = importlib.util.spec_from_file_location("kubetier_cluster_tool", CLUSTER_PY)
    mod = importlib.util.module_from_spec(spec)
    mp.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    mp.undo()


def test_fleet_is_four_on_demand_and_four_spot_gpu_nodes_over_three_zones(cluster):
    nodes = cluster.fleet_manifest()["items"]
    labels = [n["metadata"]["labels"] for n in nodes]
    assert Counter(lb["karpenter.sh/capacity-type"] for lb in labels) == {"on-demand": 4, "spot": 4}
    assert {lb["topology.kubernetes.io/zone"] for lb in labels} == {"zone-a", "zone-b", "zone-c"}
    # both capacity types exist in more than one zone, so spread and spot policy can both hold
    for ctype in ("on-demand", "spot"):
        assert (
            len({lb["topology.kubernetes.io/zone"] for lb in labels if lb["karpenter.sh/capacity-type"] == ctype}) >= 2
        )
    for n in nodes:
        assert n["status"]["capacity"]["nvidia.com/gpu"] == "8" == n["status"]["allocatable"]["nvidia.com/gpu"]
        assert n["metadata"]["labels"]["nvidia.com/gpu.product"]
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in n["spec"]["taints"]


def test_kwokctl_configuration_binds_loopback_with_rbac_and_local_binaries(cluster):
    cfg = json.loads(cluster._config_file().read_text())
    opts = cfg["options"]
    assert cfg["kind"] == "KwokctlConfiguration" and opts["runtime"] == "binary"
    assert opts["bindAddress"] == "127.0.0.1"
    assert opts["kubeAuthorization"] is True and opts["kubeAdmission"] is True
    for key in (
        "kubeApiserverBinary",
        "kubeControllerManagerBinary",
        "kubeSchedulerBinary",
        "kwokControllerBinary",
        "etcdBinary",
        "kubectlBinary",
    ):
        assert opts[key].startswith(str(cluster.CACHE)), key
        assert "://" not in opts[key]  # plain paths, never downloads


def test_missing_ingredients_are_reported_not_guessed(cluster):
    # an empty cache has none of them
    assert set(cluster.missing_ingredients()) == {ing.name for ing in cluster.INGREDIENTS}
