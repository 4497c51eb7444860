"""A spot node is reclaimed (tainted the way termination handlers do, then deleted):
the service's pods move to remaining capacity and it returns to Ready with its counts,
the on-demand floor intact. Needs fake (KWOK) nodes, which can be recreated afterwards."""

from __future__ import annotations

import copy
import json

import pytest

from e2e_support import CAPACITY_LABEL, TIER_LABEL, Kubectl, running, serving_pods, three_tier_service, wait_until
from kubetier.localdev.fake_nodes import recreatable_node
from test_reconcile import EXPECTED, apply_and_wait_ready, describe, nodes_by_name, ready_with_counts

# What AWS node-termination-handler puts on a node after a spot interruption notice.
INTERRUPTION_TAINT = {"key": "aws-node-termination-handler/spot-itn", "value": "interrupted", "effect": "NoExecute"}


def recreatable(node: dict) -> dict:
    """The node as it was created (labels, taints, capacity), for putting it back."""
    return recreatable_node(node, (INTERRUPTION_TAINT["key"], "karpenter.sh/disrupted"))


def service_with_a_spot_victim(kubectl: Kubectl, gpu_nodes: list[dict], namespace: str, name: str):
    """Apply the three-tier service and pick a spot node serving it: (node body, pods on it)."""
    if not all((n["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake" for n in gpu_nodes):
        pytest.skip("needs KWOK fake GPU nodes (a reclaimed kind node cannot be recreated)")
    apply_and_wait_ready(kubectl, three_tier_service(name, namespace), EXPECTED)
    nodes = nodes_by_name(kubectl)
    pods = running(serving_pods(kubectl, namespace, name))
    on_spot = [p for p in pods if nodes[p["spec"]["nodeName"]]["metadata"]["labels"].get(CAPACITY_LABEL) == "spot"]
    assert on_spot, "three-tier service has nothing on spot to reclaim"
    victim = copy.deepcopy(nodes[on_spot[0]["spec"]["nodeName"]])
    return victim, {p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == victim["metadata"]["name"]}


def restore(kubectl: Kubectl, victim: dict) -> None:
    """Put a reclaimed node back, or drop the taints the test added (a merge patch replaces the list)."""
    name = victim["metadata"]["name"]
    if name in nodes_by_name(kubectl):
        taints = recreatable(victim)["spec"]["taints"]
        kubectl("patch", "node", name, "--type=merge", "-p", json.dumps({"spec": {"taints": taints}}))
    else:
        kubectl.apply(recreatable(victim))
    wait_until(
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in kubectl.json("get", "node", name).get("status", {}).get("conditions", [])
        ),
        f"{name} back and Ready",
        timeout=60,
    )


def test_spot_node_reclaimed_pods_move_and_service_recovers(kubectl: Kubectl, crds, operator, gpu_nodes, namespace):
    victim, moved = service_with_a_spot_victim(kubectl, gpu_nodes, namespace, "spot")
    victim_name = victim["metadata"]["name"]

    try:
        # interruption notice: cordon + NoExecute taint evicts the pods ...
        taints = victim["spec"].get("taints", []) + [INTERRUPTION_TAINT]
        kubectl(
            "patch",
            "node",
            victim_name,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"unschedulable": True, "taints": taints}}),
        )
        # ... and then the instance is gone
        kubectl("delete", "node", victim_name, "--wait=true", "--timeout=60s")

        def recovered():
            if not ready_with_counts(kubectl, namespace, "spot", EXPECTED):
                return None
            now = running(serving_pods(kubectl, namespace, "spot"))
            if any(p["spec"]["nodeName"] == victim_name or p["metadata"]["name"] in moved for p in now):
                return None
            return now if len(now) == sum(EXPECTED.values()) else None

        now = wait_until(
            recovered,
            f"service Ready again without {victim_name}",
            timeout=120,
            describe=lambda: describe(kubectl, namespace, "spot"),
        )
        remaining = nodes_by_name(kubectl)
        assert victim_name not in remaining
        # spot: never stays on on-demand, whatever moved
        for p in now:
            if p["metadata"]["labels"][TIER_LABEL] == "interactive":
                assert remaining[p["spec"]["nodeName"]]["metadata"]["labels"][CAPACITY_LABEL] == "on-demand"
        assert operator.alive(), operator.log_tail()
    finally:
        restore(kubectl, victim)


# Karpenter taints a node it is about to disrupt (spot interruption, consolidation).
NOTICE_TAINT = {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}


def test_preemption_notice_drains_and_replaces_before_the_node_goes(
    kubectl: Kubectl, crds, operator, gpu_nodes, namespace
):
    """A notice (taint) alone, with the node still up: the operator marks the service's pods
    on it with the deadline, Events say so, the pods are replaced elsewhere at once, and the
    service stays Ready; only then does the node go."""
    import time

    victim, doomed = service_with_a_spot_victim(kubectl, gpu_nodes, namespace, "notice")
    victim_name = victim["metadata"]["name"]
    try:
        t0 = time.monotonic()
        taints = victim["spec"].get("taints", []) + [NOTICE_TAINT]
        kubectl("patch", "node", victim_name, "--type=merge", "-p", json.dumps({"spec": {"taints": taints}}))

        def replaced():
            now = running(serving_pods(kubectl, namespace, "notice"))
            names = {p["metadata"]["name"] for p in now}
            if names & doomed or len(now) != sum(EXPECTED.values()):
                return None
            if any(p["spec"]["nodeName"] == victim_name for p in now):
                return None
            return now

        wait_until(
            replaced,
            f"pods on {victim_name} replaced elsewhere while the node is still up",
            timeout=60,
            describe=lambda: describe(kubectl, namespace, "notice"),
        )
        drained_s = time.monotonic() - t0
        assert victim_name in nodes_by_name(kubectl), "the node must still exist: the drain ran on the notice"
        events = kubectl.json("get", "events", "-n", namespace)["items"]
        notices = [e for e in events if e.get("reason") == "PreemptionNotice"]
        assert any(e["involvedObject"]["kind"] == "ModelService" for e in notices), notices
        assert {e["involvedObject"]["name"] for e in notices if e["involvedObject"]["kind"] == "Pod"} >= doomed
        assert any(victim_name in e["message"] for e in notices)
        kubectl("delete", "node", victim_name, "--wait=true", "--timeout=60s")
        wait_until(
            lambda: ready_with_counts(kubectl, namespace, "notice", EXPECTED),
            "service Ready after the node went",
            timeout=60,
        )
        print(f"notice -> {len(doomed)} pod(s) replaced in {drained_s:.1f}s")
        assert operator.alive(), operator.log_tail()
    finally:
        restore(kubectl, victim)
