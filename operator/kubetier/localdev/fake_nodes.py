"""The local cluster's fake GPU nodes (KWOK): putting back one that a test or the demo
deleted to play a spot reclaim. Development only, like the rest of kubetier.localdev."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

KWOK_ANNOTATION_PREFIX = "kwok.x-k8s.io/"


def recreatable_node(node: dict[str, Any], drop_taint_keys: Collection[str]) -> dict[str, Any]:
    """``node`` as it was created, for ``kubectl apply``: name, labels, KWOK's own
    annotations (which make it a fake node again), capacity, and its taints less those
    keyed ``drop_taint_keys`` (the ones the reclaim added)."""
    meta = node["metadata"]
    annotations = meta.get("annotations") or {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": meta["name"],
            "labels": meta.get("labels", {}),
            "annotations": {k: v for k, v in annotations.items() if k.startswith(KWOK_ANNOTATION_PREFIX)},
        },
        "spec": {"taints": [t for t in (node.get("spec") or {}).get("taints", []) if t["key"] not in drop_taint_keys]},
        "status": {"capacity": node["status"]["capacity"], "allocatable": node["status"]["allocatable"]},
    }
