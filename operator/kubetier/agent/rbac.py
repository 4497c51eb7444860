"""The node agent's RBAC, as data: it reads and watches its own Node (the requested cap;
the watch carries fieldSelector metadata.name) and patches it (its power report). The chart's node-agent ClusterRole renders the same rules
(tests/chart/test_chart_node_agent.py compares them); the e2e runs the agent under them."""

from __future__ import annotations

from typing import Any

from kubetier.api.labels import MANAGED_BY_VALUE, PART_OF_LABEL

RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "watch", "patch"]},
]


def cluster_role(name: str = "kubetier-node-agent") -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {PART_OF_LABEL: MANAGED_BY_VALUE}},
        "rules": [dict(rule) for rule in RULES],
    }
