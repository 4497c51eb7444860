"""The operator's least-privilege RBAC, as data (a ClusterRole's ``rules``).

The Helm chart renders its ClusterRole from the same rules (a drift test on the chart
side compares them), and the e2e suite runs the operator under a ServiceAccount bound
to exactly these rules, so a missing permission fails there, not in production.
"""

from __future__ import annotations

from typing import Any

from kubetier.api.labels import MANAGED_BY_VALUE, PART_OF_LABEL

# list + watch: the controller keeps its children in a watch cache (modelservice/watches.py).
CHILD_WRITE_VERBS = ["get", "list", "watch", "create", "patch", "delete"]

RULES: list[dict[str, Any]] = [
    # --- kopf itself
    # Watch the ModelService resource; patch it for kopf's finalizer and its progress /
    # last-handled-configuration annotations (under kubetier.io).
    {"apiGroups": ["kubetier.io"], "resources": ["modelservices"], "verbs": ["get", "list", "watch", "patch"]},
    # kopf notices CRDs being added or removed at runtime.
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    # kopf observes namespaces when run with namespace patterns.
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    # kopf's peering (when a KopfPeering exists; without one it runs standalone).
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings", "kopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    # Events: kopf's warnings and ours on condition transitions.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    # --- the reconcile
    {"apiGroups": ["kubetier.io"], "resources": ["modelservices/status"], "verbs": ["get", "patch"]},
    # Children, applied server-side (an apply that creates needs `create`), pruned when
    # no longer desired.
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": CHILD_WRITE_VERBS},
    {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": CHILD_WRITE_VERBS},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": CHILD_WRITE_VERBS},
    # Status: pods of each tier (ready, spot placement) and nodes (GPU allocatable,
    # capacity type): read only, through watches.
    {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["list", "watch"]},
    # Every router replica's status endpoint (router_feed.py): the router Service's
    # EndpointSlices, read only.
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    # --- the spot controller: watches Nodes (above) for preemption notices; marks the pods
    # on a noticed node with the deadline and deletes them with a grace period (replacement).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch", "delete"]},
]


def cluster_role(name: str = "kubetier-operator") -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {PART_OF_LABEL: MANAGED_BY_VALUE}},
        "rules": [dict(rule) for rule in RULES],
    }
