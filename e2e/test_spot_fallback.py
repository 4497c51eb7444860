"""Spot tier options on the real apiserver and scheduler (KWOK fake GPU nodes: 4 on-demand,
4 spot over three zones):

* over-provisioning (a spot-only spare Deployment) and zone spreading (a required
  topology spread over topology.kubernetes.io/zone) are rendered and honoured by the
  scheduler;
* with every spot node gone, the operator's own on-demand fallback (capacity.fallbackAfterSeconds)
  starts after the bound, serves (Ready, in the tier's Service endpoints), and the
  ModelService says so (SpotFallback Event, status.tiers[].fallbackReplicas, Ready);
* when spot nodes come back, the spot replica is scheduled on spot and, after the return
  period, the fallback goes back to zero (ReturnToSpot Event).

Runs its own operator with a short return period (KUBETIER_SPOT_RETURN_AFTER_S=15), pausing
the suite's."""

from __future__ import annotations

import copy
import json
import time

import pytest

from e2e_support import (
    CAPACITY_LABEL,
    ZONE_LABEL,
    Kubectl,
    OperatorProcess,
    condition,
    model_service,
    serving_pods,
    tier,
    tier_status,
    wait_until,
)
from test_spot_preemption import recreatable

FALLBACK_AFTER_S = 10
RETURN_AFTER_S = 15


def spot_service(name: str, namespace: str) -> dict:
    batch = tier("batch", 5000, 150, 10, replicas=2, spot="preferred")
    batch["capacity"].update(
        {"overProvision": 1, "zoneSpread": "required", "zoneMaxSkew": 1, "fallbackAfterSeconds": FALLBACK_AFTER_S}
    )
    return model_service(name, namespace, [tier("interactive", 300, 30, 100, replicas=1), batch], gpus_per_replica=2)


def nodes(kubectl: Kubectl) -> dict[str, dict]:
    return {n["metadata"]["name"]: n for n in kubectl.json("get", "nodes")["items"]}


def ready(obj: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", []))


def pool_pods(kubectl: Kubectl, namespace: str, name: str, pool: str) -> list[dict]:
    return [
        p
        for p in serving_pods(kubectl, namespace, name, "batch")
        if p["metadata"]["labels"]["kubetier.io/pool"] == pool
    ]


def events(kubectl: Kubectl, namespace: str, reason: str) -> list[dict]:
    return [e for e in kubectl.json("get", "events", "-n", namespace)["items"] if e.get("reason") == reason]


def describe(kubectl: Kubectl, namespace: str, name: str):
    def text() -> str:
        ms = kubectl.json("get", "modelservice", name, "-n", namespace)
        pods = kubectl("get", "pods", "-n", namespace, "-o", "wide", "-L", "kubetier.io/pool")
        return json.dumps(ms.get("status"), indent=1)[:3000] + "\n" + pods

    return text


@pytest.fixture
def own_operator(operator, operator_identity, workdir, monkeypatch):
    """The suite's operator paused; one with a short return-to-spot period instead."""
    monkeypatch.setenv("KUBETIER_SPOT_RETURN_AFTER_S", str(RETURN_AFTER_S))
    operator.stop()
    mine = OperatorProcess(operator_identity["kubeconfig"], workdir / "spot-fallback-operator.log")
    mine.start()
    try:
        yield mine
    finally:
        mine.stop()
        operator.start()


def test_spare_spot_pool_and_required_zone_spread_are_scheduled(
    kubectl: Kubectl, crds, own_operator, gpu_nodes, namespace
):
    kubectl.apply(spot_service("spare", namespace))
    all_nodes = nodes(kubectl)

    def placed():
        main, spare = pool_pods(kubectl, namespace, "spare", "main"), pool_pods(kubectl, namespace, "spare", "spare")
        if len(main) != 2 or len(spare) != 1 or not all(ready(p) for p in main + spare):
            return None
        return main, spare

    main, spare = wait_until(
        placed, "batch main (2) and spare (1) pods Ready", timeout=90, describe=describe(kubectl, namespace, "spare")
    )
    deploy = kubectl.json("get", "deployment", "spare-batch-spare", "-n", namespace)
    terms = deploy["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert {"key": CAPACITY_LABEL, "operator": "In", "values": ["spot"]} in terms["nodeSelectorTerms"][0][
        "matchExpressions"
    ]
    [spread] = kubectl.json("get", "deployment", "spare-batch", "-n", namespace)["spec"]["template"]["spec"][
        "topologySpreadConstraints"
    ]
    assert spread["topologyKey"] == ZONE_LABEL and spread["whenUnsatisfiable"] == "DoNotSchedule"
    # every batch pod on spot (main: spot-only because of fallbackAfterSeconds), spread over zones
    kinds = {all_nodes[p["spec"]["nodeName"]]["metadata"]["labels"][CAPACITY_LABEL] for p in main + spare}
    assert kinds == {"spot"}
    zones = [all_nodes[p["spec"]["nodeName"]]["metadata"]["labels"][ZONE_LABEL] for p in main + spare]
    assert len(set(zones)) == 3, f"3 pods over 3 zones with maxSkew 1, got {zones}"
    ms = wait_until(
        lambda: (
            (m := kubectl.json("get", "modelservice", "spare", "-n", namespace))
            and (condition(m, "Ready") or {}).get("status") == "True"
            and m
        ),
        "spare Ready",
        timeout=60,
        describe=describe(kubectl, namespace, "spare"),
    )
    batch = tier_status(ms, "batch")
    assert batch["spotReplicas"] == 3 and batch["onDemandReplicas"] == 0 and batch["fallbackReplicas"] == 0


def test_every_spot_node_gone_falls_back_to_on_demand_then_returns(
    kubectl: Kubectl, crds, own_operator, gpu_nodes, namespace
):
    if not all((n["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake" for n in gpu_nodes):
        pytest.skip("needs KWOK fake GPU nodes (reclaimed nodes are recreated)")
    name = "fallback"
    kubectl.apply(spot_service(name, namespace))
    wait_until(
        lambda: len([p for p in pool_pods(kubectl, namespace, name, "main") if ready(p)]) == 2,
        "batch main pods Ready on spot",
        timeout=90,
        describe=describe(kubectl, namespace, name),
    )
    spot_nodes = [
        copy.deepcopy(n) for n in nodes(kubectl).values() if n["metadata"]["labels"].get(CAPACITY_LABEL) == "spot"
    ]
    assert len(spot_nodes) >= 2
    try:
        t0 = time.monotonic()
        for n in spot_nodes:
            kubectl("delete", "node", n["metadata"]["name"], "--wait=false")

        def fallen_back():
            ms = kubectl.json("get", "modelservice", name, "-n", namespace)
            fb = [p for p in pool_pods(kubectl, namespace, name, "fallback") if ready(p)]
            st = tier_status(ms, "batch") or {}
            # status follows the pods: the fallback pods counted on on-demand
            if len(fb) < 2 or st.get("fallbackReplicas") != 2 or st.get("onDemandReplicas", 0) < 2:
                return None
            return ms, fb

        ms, fallback = wait_until(
            fallen_back,
            "two on-demand fallback replicas Ready",
            timeout=120,
            describe=describe(kubectl, namespace, name),
        )
        fell_back_s = time.monotonic() - t0
        on_demand = {
            n: o for n, o in nodes(kubectl).items() if o["metadata"]["labels"].get(CAPACITY_LABEL) == "on-demand"
        }
        assert all(p["spec"]["nodeName"] in on_demand for p in fallback)
        assert fell_back_s >= FALLBACK_AFTER_S - 1, "the fallback must wait for the bound"

        # the fallback serves: its pods are endpoints of the tier's Service
        # (the EndpointSlice controller adds a pod some time after it turns Ready: a
        # fresh-clone CI read the slice while it held one of the two)
        def endpoint_addresses():
            slices = kubectl.items("endpointslices", namespace, f"kubernetes.io/service-name={name}-batch")
            return {a for s in slices for e in s.get("endpoints") or [] for a in e.get("addresses") or []}

        fallback_ips = {p["status"]["podIP"] for p in fallback}
        addresses = wait_until(
            lambda: (a := endpoint_addresses()) >= fallback_ips and a, "fallback pods in the tier's Service", timeout=30
        )
        assert fallback_ips <= addresses
        batch = tier_status(ms, "batch")
        assert batch["onDemandReplicas"] >= 2 and batch["spotReplicas"] == 0
        wait_until(
            lambda: (
                (condition(kubectl.json("get", "modelservice", name, "-n", namespace), "Ready") or {}).get("status")
                == "True"
            ),
            "Ready while the fallback covers the spot pool",
            timeout=30,
            describe=describe(kubectl, namespace, name),
        )
        started = events(kubectl, namespace, "SpotFallback")
        assert started and "batch" in started[0]["message"], started
        # spot main pods wait for spot, they do not land on on-demand
        assert all(not p["spec"].get("nodeName") for p in pool_pods(kubectl, namespace, name, "main"))
    finally:
        t1 = time.monotonic()  # spot comes back from here on
        for n in spot_nodes:
            if n["metadata"]["name"] not in nodes(kubectl):
                kubectl.apply(recreatable(n))

    def returned():
        main = [p for p in pool_pods(kubectl, namespace, name, "main") if ready(p)]
        fb = pool_pods(kubectl, namespace, name, "fallback")
        ms = kubectl.json("get", "modelservice", name, "-n", namespace)
        if len(main) != 2 or fb or (tier_status(ms, "batch") or {}).get("fallbackReplicas") != 0:
            return None
        return main

    main = wait_until(
        returned, "spot main pods Ready and the fallback gone", timeout=120, describe=describe(kubectl, namespace, name)
    )
    returned_s = time.monotonic() - t1
    assert returned_s >= RETURN_AFTER_S, "the fallback must stay until spot has been steady"
    all_nodes = nodes(kubectl)
    assert all(all_nodes[p["spec"]["nodeName"]]["metadata"]["labels"][CAPACITY_LABEL] == "spot" for p in main)
    back = events(kubectl, namespace, "ReturnToSpot")
    assert back and "2 -> 0" in back[-1]["message"], back
    print(
        f"spot gone -> on-demand fallback Ready in {fell_back_s:.1f}s; spot back -> fallback removed in {returned_s:.1f}s"
    )
    assert own_operator.alive(), own_operator.log_tail()
