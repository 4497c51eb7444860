"""The cluster itself: the fake GPU fleet exists and the real scheduler bin-packs GPU
requests on it (independent of kubetier; a failure here is a cluster problem)."""

from __future__ import annotations

from collections import Counter

from e2e_support import CAPACITY_LABEL, GPU, ZONE_LABEL, Kubectl, wait_until


def test_gpu_fleet_has_zones_capacity_types_and_taints(gpu_nodes):
    assert len({n["metadata"]["labels"].get(ZONE_LABEL) for n in gpu_nodes}) >= 2
    kinds = Counter(n["metadata"]["labels"].get(CAPACITY_LABEL) for n in gpu_nodes)
    assert kinds["on-demand"] >= 1 and kinds["spot"] >= 1, kinds
    for n in gpu_nodes:
        assert n["metadata"]["labels"].get("nvidia.com/gpu.product"), n["metadata"]["name"]
        assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in n["spec"].get("taints", [])), (
            f"{n['metadata']['name']} lacks the {GPU} NoSchedule taint"
        )


def gpu_pod(name: str, namespace: str, gpus: int, tolerate: bool = True) -> dict:
    spec = {
        "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10", "resources": {"limits": {GPU: str(gpus)}}}]
    }
    if tolerate:
        spec["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_scheduler_honours_gpu_counts_and_taints(kubectl: Kubectl, gpu_nodes, namespace):
    per_node = min(int(n["status"]["allocatable"][GPU]) for n in gpu_nodes)
    kubectl.apply(
        [
            gpu_pod("whole-node-a", namespace, per_node),
            gpu_pod("whole-node-b", namespace, per_node),
            gpu_pod("too-big", namespace, per_node + 1),
            gpu_pod("no-toleration", namespace, 1, tolerate=False),
        ]
    )

    def placed():
        pods = {p["metadata"]["name"]: p for p in kubectl.items("pods", namespace)}
        ok = all(pods.get(n, {}).get("status", {}).get("phase") == "Running" for n in ("whole-node-a", "whole-node-b"))
        return pods if ok else None

    pods = wait_until(placed, "whole-node pods Running", timeout=60)
    assert pods["whole-node-a"]["spec"]["nodeName"] != pods["whole-node-b"]["spec"]["nodeName"]

    def unschedulable(name: str):
        pod = kubectl.json("get", "pod", name, "-n", namespace)
        conds = {c["type"]: c for c in pod.get("status", {}).get("conditions", [])}
        sched = conds.get("PodScheduled")
        return sched if sched and sched["status"] == "False" and sched.get("reason") == "Unschedulable" else None

    too_big = wait_until(lambda: unschedulable("too-big"), "too-big to be Unschedulable", timeout=30)
    assert f"Insufficient {GPU}" in too_big["message"], too_big
    untolerated = wait_until(lambda: unschedulable("no-toleration"), "no-toleration to be Unschedulable", timeout=30)
    assert "taint" in untolerated["message"], untolerated
