"""The chart grants exactly what the code uses, no more, no less.

Operator: the rules the chart renders equal `kubetier.operator.rbac.RULES` (the list the
operator's e2e identity is built from), in both modes: cluster-wide (one ClusterRole) and
watchNamespaces (cluster-scoped rules in a ClusterRole, namespaced ones in a Role per
watched namespace). Router: read-only access to pods, ConfigMaps and Secrets.
Rules are compared as sets of (apiGroup, resource, verb) grants.
"""

from __future__ import annotations

from conftest import VALUES_DIR, by_kind, one

CLUSTER_SCOPED = {("", "nodes"), ("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions"),
                  ("kopf.dev", "clusterkopfpeerings"), ("kubetier.io", "powerbudgets"),
                  ("kubetier.io", "powerbudgets/status")}
ROUTER_GRANTS = {("", res, verb) for res in ("pods", "configmaps", "secrets") for verb in ("get", "list", "watch")}


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
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kt-kubetier-operator",
                                    "namespace": "kubetier-system"}]
    op = one(objs, "Deployment", "kt-kubetier-operator")
    assert op["spec"]["template"]["spec"]["serviceAccountName"] == "kt-kubetier-operator"


def test_operator_namespaced_mode_splits_the_same_rules(render):
    objs = render(VALUES_DIR / "ok-watch-namespaces.yaml")
    cluster = grants(one(objs, "ClusterRole", "kt-kubetier-operator")["rules"])
    assert all((g, r) in CLUSTER_SCOPED or r == "kopfpeerings" for g, r, _ in cluster), \
        f"namespaced resources granted cluster-wide: {sorted(x for x in cluster if (x[0], x[1]) not in CLUSTER_SCOPED)}"
    roles = [r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "kt-kubetier-operator"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for r in roles:
        ns_grants = grants(r["rules"])
        assert not {(g, res) for g, res, _ in ns_grants} & CLUSTER_SCOPED
        assert cluster | ns_grants == code_grants(), r["metadata"]["namespace"]


def test_router_is_read_only(render):
    objs = render()
    assert grants(one(objs, "ClusterRole", "kt-kubetier-router")["rules"]) == ROUTER_GRANTS
    objs = render(VALUES_DIR / "ok-one-namespace.yaml")
    (role,) = [r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "kt-kubetier-router"]
    assert grants(role["rules"]) == ROUTER_GRANTS


def test_no_role_without_a_binding_and_no_binding_to_default(render):
    for values in (None, *sorted(VALUES_DIR.glob("ok-*.yaml"))):
        objs = render(values)
        roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
                 for o in objs if o["kind"] in ("Role", "ClusterRole")}
        bound = set()
        for b in objs:
            if b["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                bound.add((b["roleRef"]["kind"], b["metadata"].get("namespace"), b["roleRef"]["name"]))
                assert all(s["name"] != "default" for s in b["subjects"]), b["metadata"]["name"]
        assert roles == bound, f"unbound: {roles - bound}, dangling: {bound - roles}"
