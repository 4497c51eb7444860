"""(e) An operator killed in the middle of a reconcile converges after restart with no
duplicate objects. (f) Asking for more GPUs than the cluster has is reported in status
with a reason, and nothing crashes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter

import yaml

from e2e_support import (
    SERVICE_LABEL,
    TIER_LABEL,
    Kubectl,
    condition,
    model_service,
    running,
    serving_pods,
    three_tier_service,
    tier,
    tier_status,
    wait_until,
)
from kubetier.localdev.processes import kill_process
from test_reconcile import EXPECTED, describe, ready_with_counts

OWNED_KINDS = "deployments,statefulsets,services,configmaps,poddisruptionbudgets"


def rendered_children(ms: dict) -> set[tuple[str, str]]:
    """(kind, name) of every object `kubetier render` says the operator applies for ``ms``."""
    res = subprocess.run(
        [sys.executable, "-m", "kubetier.cli", "render", "-"],
        input=json.dumps(ms),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(res.stdout) if d}


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    kubectl: Kubectl, crds, operator, gpu_nodes, namespace
):
    ms = three_tier_service("restart", namespace)
    # Watch for the first child and SIGKILL the operator the moment it appears, so the
    # kill lands inside the reconcile that is creating the children.
    watcher = subprocess.Popen(
        [
            kubectl.binary,
            "--kubeconfig",
            kubectl.kubeconfig,
            "get",
            "deployments",
            "-n",
            namespace,
            "-l",
            f"{SERVICE_LABEL}=restart",
            "--watch",
            "-o",
            "name",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(0.5)  # the watch is established
        kubectl.apply(ms)
        first = watcher.stdout.readline() if watcher.stdout else ""
        operator.kill()
    finally:
        kill_process(watcher)
    assert first, "no child object appeared"
    children_at_kill = len(kubectl.items(OWNED_KINDS, namespace, f"{SERVICE_LABEL}=restart"))
    # change the spec while the operator is down: the restart must pick it up too
    ms["spec"]["tiers"][1]["replicas"] = {"min": 1, "max": 3}
    expected = dict(EXPECTED, standard=1)
    kubectl.apply(ms)
    operator.start()
    wait_until(
        lambda: ready_with_counts(kubectl, namespace, "restart", expected),
        f"Ready with {expected}",
        timeout=120,
        describe=lambda: describe(kubectl, namespace, "restart"),
    )

    time.sleep(3)  # let a duplicate, if any were made, show up
    # exactly the objects the operator's own renderer says this spec needs: nothing
    # twice under another name, nothing left from the spec before the edit
    want = rendered_children(ms)
    have = {
        (c["kind"], c["metadata"]["name"]) for c in kubectl.items(OWNED_KINDS, namespace, f"{SERVICE_LABEL}=restart")
    }
    print(f"children when the operator was killed: {children_at_kill} of {len(want)}")
    assert have == want, (
        f"children after restart differ from `kubetier render`: extra {sorted(have - want)}, "
        f"missing {sorted(want - have)} (children at kill: {children_at_kill})"
    )

    pods = serving_pods(kubectl, namespace, "restart")
    assert Counter(p["metadata"]["labels"][TIER_LABEL] for p in pods) == Counter(expected)
    assert len(kubectl.items("configmaps", namespace, f"{SERVICE_LABEL}=restart,kubetier.io/routing-config=true")) <= 1
    assert operator.alive(), operator.log_tail()


def test_not_enough_gpus_is_reported_in_status(kubectl: Kubectl, crds, operator, gpu_nodes, namespace):
    total_gpus = sum(int(n["status"]["allocatable"]["nvidia.com/gpu"]) for n in gpu_nodes)
    per_replica = 8
    replicas = total_gpus // per_replica + 2  # more whole-node replicas than there are GPU nodes
    ms = model_service(
        "huge",
        namespace,
        [tier("bulk", 5000, 150, 10, replicas=replicas, spot="allowed")],
        gpus_per_replica=per_replica,
    )
    kubectl.apply(ms)

    pattern = re.compile(r"gpu|capacity|unschedulable|insufficient|pending", re.I)

    def reported():
        obj = kubectl.json("get", "modelservice", "huge", "-n", namespace)
        ready = condition(obj, "Ready")
        if ready is None or ready["status"] == "True":
            return None
        conds = (obj.get("status") or {}).get("conditions") or []
        if any(
            c.get("reason") and pattern.search(f"{c.get('reason')} {c.get('message', '')}")
            for c in conds
            if c["type"] != "Ready" or c["status"] != "True"
        ):
            return obj
        return None

    obj = wait_until(
        reported,
        "a status condition that names the GPU shortage",
        timeout=90,
        describe=lambda: describe(kubectl, namespace, "huge"),
    )
    ready = condition(obj, "Ready")
    assert ready["reason"], ready
    pods = serving_pods(kubectl, namespace, "huge")
    ts = tier_status(obj, "bulk")
    assert ts is not None
    assert ts["readyReplicas"] < replicas
    assert len(running(pods)) <= total_gpus // per_replica
    assert operator.alive(), f"operator died:\n{operator.log_tail()}"
    # and it keeps reconciling: the service can be fixed by lowering the ask
    ms["spec"]["tiers"][0]["replicas"] = {"min": 2, "max": 2}
    kubectl.apply(ms)
    wait_until(
        lambda: ready_with_counts(kubectl, namespace, "huge", {"bulk": 2}),
        "Ready after lowering replicas",
        timeout=90,
        describe=lambda: describe(kubectl, namespace, "huge"),
    )
