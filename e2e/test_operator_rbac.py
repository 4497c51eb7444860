"""(d) The operator runs under its own ServiceAccount with the rules kubetier.operator.rbac
exports (what the Helm chart ships), not as cluster admin, and a missing permission shows."""

from __future__ import annotations

import time

from e2e_support import (
    OPERATOR_NAMESPACE,
    Kubectl,
    OperatorProcess,
    condition,
    operator_rbac_objects,
    three_tier_service,
    wait_until,
)
from kubetier.localdev.access import token_kubeconfig


def test_operator_identity_is_its_service_account(kubectl: Kubectl, operator_identity):
    who = Kubectl(kubectl.binary, str(operator_identity["kubeconfig"]))
    out = who("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert out == operator_identity["user"]


def test_operator_is_not_cluster_admin(kubectl: Kubectl, operator_identity):
    user = operator_identity["user"]
    for verb, resource in (
        ("*", "*"),
        ("delete", "nodes"),
        ("create", "clusterrolebindings"),
        ("escalate", "clusterroles"),
    ):
        res = kubectl.run("auth", "can-i", verb, resource, f"--as={user}", "-A")
        assert res.stdout.strip() == "no", f"{user} may {verb} {resource}: the operator must not be admin"
    # and it may do its job
    for verb, resource in (("watch", "modelservices.kubetier.io"), ("patch", "modelservices.kubetier.io/status")):
        res = kubectl.run("auth", "can-i", verb, resource, f"--as={user}", "-A")
        assert res.stdout.strip() == "yes", f"{user} may not {verb} {resource}"


def test_operator_log_shows_no_forbidden_requests(operator, kubectl, crds, gpu_nodes, namespace):
    from test_reconcile import EXPECTED, apply_and_wait_ready

    apply_and_wait_ready(kubectl, three_tier_service("rbac", namespace), EXPECTED)
    assert not operator.forbidden_lines(), "\n".join(operator.forbidden_lines()[:20])


def test_a_missing_permission_makes_reconcile_fail(
    kubectl: Kubectl, kubeconfig, crds, operator, gpu_nodes, namespace, workdir
):
    """Guard for the guard: the same operator with one rule removed (the one that lets it
    create its workloads) must not reach Ready, so the suite would catch a missing rule."""
    sa, role = "kubetier-operator-crippled", "kubetier-operator-crippled-e2e"
    objs = operator_rbac_objects(OPERATOR_NAMESPACE, sa, role)
    (role_obj,) = [o for o in objs if o["kind"] == "ClusterRole"]
    rules = role_obj["rules"]
    workload_kinds = {"pods", "deployments", "statefulsets"}
    kept = [r for r in rules if not (workload_kinds & set(r.get("resources", [])))]
    assert len(kept) < len(rules), f"no rule grants any of {sorted(workload_kinds)}: {rules}"
    role_obj["rules"] = kept
    kubectl.apply(objs)
    token = kubectl("create", "token", sa, "-n", OPERATOR_NAMESPACE, "--duration=1h").strip()
    crippled = OperatorProcess(
        token_kubeconfig(kubeconfig, token, workdir / "crippled.kubeconfig"), workdir / "crippled.log"
    )
    operator.stop()
    try:
        crippled.start()
        kubectl.apply(three_tier_service("denied", namespace))
        wait_until(
            crippled.forbidden_lines, "a 403 in the crippled operator's log", timeout=45, describe=crippled.log_tail
        )
        for _ in range(5):  # and the service does not become Ready anyway
            ms = kubectl.json("get", "modelservice", "denied", "-n", namespace)
            ready = condition(ms, "Ready")
            assert not (ready and ready["status"] == "True"), "Ready without permission to create workloads"
            time.sleep(1)
    finally:
        crippled.stop()
        kubectl("delete", "clusterrolebinding,clusterrole", role, "--ignore-not-found", check=False)
        kubectl("delete", "serviceaccount", sa, "-n", OPERATOR_NAMESPACE, "--ignore-not-found", check=False)
        operator.start()
