"""Builders for operator tests: ModelService bodies as the apiserver stores them, GPU nodes.

Imported by name (`from modelservice_builders import ...`), never from conftest."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from kubetier.api import ModelService, admit

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"


def sample_body(name: str = "modelservice-three-tier.yaml", uid: str = "uid-1234", **metadata: Any) -> dict[str, Any]:
    """A sample as the apiserver stores it: defaulted, with uid and generation."""
    obj = yaml.safe_load((SAMPLES / name).read_text())
    obj["metadata"].update({"uid": uid, "generation": 1, **metadata})
    return admit(obj).wire()


def parse(body: dict[str, Any]) -> ModelService:
    ms = admit(copy.deepcopy(body))
    assert isinstance(ms, ModelService)
    return ms


def gpu_node(
    name: str,
    *,
    gpus: int = 8,
    capacity: str = "on-demand",
    zone: str = "zone-a",
    product: str = "NVIDIA-H100-80GB-HBM3",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "karpenter.sh/capacity-type": capacity,
                "topology.kubernetes.io/zone": zone,
                "nvidia.com/gpu.product": product,
            },
        },
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "96", "memory": "1Ti"}},
    }


def cluster_nodes() -> list[dict[str, Any]]:
    return [
        gpu_node("od-a", zone="zone-a"),
        gpu_node("od-b", zone="zone-b"),
        gpu_node("spot-a", capacity="spot", zone="zone-a"),
    ]
