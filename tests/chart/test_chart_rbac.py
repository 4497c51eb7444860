"""The chart grants exactly what the code uses, no more, no less.

Operator: the rules the chart renders equal `kubetier.operator.rbac.RULES` (the list the
operator's e2e identity is built from), in both modes: cluster-wide (one ClusterRole) and
watchNamespaces (cluster-scoped rules in a ClusterRole, namespaced ones in a Role per
watched namespace). Router: the grants are derived from the Kubernetes API calls in the
router package's source (kubetier.kube calls: ``api.get/list("Kind", ...)`` and
``Informer(api, "Kind", ...)``, which lists and watches -> resource and verb).
Rules are compared as sets of (apiGroup, resource, verb) grants.
"""

from __future__ import annotations

import ast
from pathlib import Path

from chart_support import REPO, VALUES_DIR, by_kind, one

CLUSTER_SCOPED = {
    ("", "nodes"),
    ("", "namespaces"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("kopf.dev", "clusterkopfpeerings"),
    ("kubetier.io", "powerbudgets"),
    ("kubetier.io", "powerbudgets/status"),
}
ROUTER_PACKAGE = REPO / "operator" / "kubetier" / "router"
# kubetier.kube.KubeClient method -> RBAC verbs
CLIENT_VERBS = {
    "get": ["get"],
    "list": ["list"],
    "list_versioned": ["list"],
    "watch": ["watch"],
    "apply": ["patch", "create"],
    "patch": ["patch"],
    "create": ["create"],
    "delete": ["delete"],
}


def _kind_grants(kind: str, verbs: list[str]) -> set[tuple[str, str, str]]:
    from kubetier.kube import RESOURCES

    res = RESOURCES[kind]
    group = "" if res.prefix == "/api/v1" else res.api_version.split("/")[0]
    return {(group, res.plural, v) for v in verbs}


def client_calls_grants(package: Path) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every Kubernetes call in the package's source:
    ``<x>.api.<verb>("Kind", ...)`` (e.g. ``self.api.get("Secret", ns, name)`` -> secrets
    get) and ``Informer(api, "Kind", ...)`` (list and watch)."""
    out: set[tuple[str, str, str]] = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "Informer" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                out |= _kind_grants(node.args[1].value, ["list", "watch"])
            elif (
                isinstance(func, ast.Attribute)
                and func.attr in CLIENT_VERBS
                and isinstance(func.value, ast.Attribute)
                and func.value.attr == "api"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                out |= _kind_grants(node.args[0].value, CLIENT_VERBS[func.attr])
    return out


def grants(rules: list[dict]) -> set[tuple[str, str, str]]:
    out = set()
    for r in rules:
        assert not r.get("resourceNames") and not r.get("nonResourceURLs"), r
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    assert "*" not in (g, res, v), f"wildcard grant {r}"
                    out.add((g, res, v))
    return out


def code_grants() -> set[tuple[str, str, str]]:
    from kubetier.operator import rbac

    return grants(rbac.RULES)


def test_operator_cluster_role_equals_the_code(render):
    objs = render()
    role = one(objs, "ClusterRole", "kt-kubetier-operator")
    have, want = grants(role["rules"]), code_grants()
    assert have == want, f"chart grants more: {sorted(have - want)}\nchart grants less: {sorted(want - have)}"
    binding = one(objs, "ClusterRoleBinding", "kt-kubetier-operator")
    assert binding["roleRef"]["name"] == "kt-kubetier-operator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kt-kubetier-operator", "namespace": "kubetier-system"}
    ]
    op = one(objs, "Deployment", "kt-kubetier-operator")
    assert op["spec"]["template"]["spec"]["serviceAccountName"] == "kt-kubetier-operator"


def test_operator_namespaced_mode_splits_the_same_rules(render):
    objs = render(VALUES_DIR / "ok-watch-namespaces.yaml")
    cluster = grants(one(objs, "ClusterRole", "kt-kubetier-operator")["rules"])
    assert all((g, r) in CLUSTER_SCOPED or r == "kopfpeerings" for g, r, _ in cluster), (
        f"namespaced resources granted cluster-wide: {sorted(x for x in cluster if (x[0], x[1]) not in CLUSTER_SCOPED)}"
    )
    roles = [r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "kt-kubetier-operator"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for r in roles:
        ns_grants = grants(r["rules"])
        assert not {(g, res) for g, res, _ in ns_grants} & CLUSTER_SCOPED
        assert cluster | ns_grants == code_grants(), r["metadata"]["namespace"]


def test_router_grants_equal_its_api_calls(render):
    want = client_calls_grants(ROUTER_PACKAGE)
    assert ("", "configmaps", "list") in want, f"the call scan found {want}: is it broken?"
    objs = render()
    have = grants(one(objs, "ClusterRole", "kt-kubetier-router")["rules"])
    assert have == want, f"chart grants more: {sorted(have - want)}\nchart grants less: {sorted(want - have)}"
    assert all(v in ("get", "list", "watch") for _, _, v in have), "the router must stay read-only"
    objs = render(VALUES_DIR / "ok-one-namespace.yaml")
    (role,) = [r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "kt-kubetier-router"]
    cluster_wide = {x for x in want if (x[0], x[1]) in CLUSTER_SCOPED}
    assert ("", "nodes", "watch") in cluster_wide  # power caps (kubetier.router.discovery)
    assert grants(role["rules"]) == want - cluster_wide
    assert grants(one(objs, "ClusterRole", "kt-kubetier-router")["rules"]) == cluster_wide


def test_call_scan_maps_client_methods(tmp_path):
    (tmp_path / "m.py").write_text(
        "def f(self):\n"
        "    self.api.list('Pod', None, 'a=b')\n"
        "    self.api.get('Secret', 'ns', 'b')\n"
        "    self.api.patch('ConfigMap', 'ns', 'b', {})\n"
        "    Informer(self.api, 'EndpointSlice', 'ns')\n"
    )
    assert client_calls_grants(tmp_path) == {
        ("", "pods", "list"),
        ("", "secrets", "get"),
        ("", "configmaps", "patch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
    }
