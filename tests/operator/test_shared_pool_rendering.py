"""spec.sharedPool: what the operator renders, how it reports the pool, and how the
autoscaler sees pool servers (by the bin the router put them in)."""

from __future__ import annotations

import datetime as dt
import json

from modelservice_builders import cluster_nodes, parse, sample_body

from kubetier.api.routing import RoutingDocument
from kubetier.operator.modelservice.autoscale_feed import router_bins, server_states
from kubetier.operator.modelservice.desired import desired
from kubetier.operator.modelservice.model import Observed, OperatorConfig
from kubetier.operator.modelservice.status import compute_status

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
POOL, TIER = "kubetier.io/pool", "kubetier.io/tier"


def pool_body(pool_min: int = 3, pool_max: int = 6) -> dict:
    body = sample_body("modelservice-shared-pool.yaml")
    body["spec"]["sharedPool"] = {"replicas": {"min": pool_min, "max": pool_max}}
    return body


def render(body: dict, replicas=None) -> dict:
    objs = desired(parse(body), Observed(), OperatorConfig(), replicas)
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def test_one_pool_workload_and_no_tier_workloads():
    objs = render(pool_body())
    assert set(objs) == {
        ("ConfigMap", "sim-pool-routing"),
        ("Deployment", "sim-pool-pool"),
        ("Service", "sim-pool-pool"),
        ("PodDisruptionBudget", "sim-pool-pool"),
    }
    deploy = objs[("Deployment", "sim-pool-pool")]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert labels[POOL] == "shared" and TIER not in labels and labels["kubetier.io/role"] == "serving"
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector == {"kubetier.io/service": "sim-pool", "kubetier.io/role": "serving", POOL: "shared"}
    assert objs[("Service", "sim-pool-pool")]["spec"]["selector"] == selector
    assert objs[("PodDisruptionBudget", "sim-pool-pool")]["spec"]["selector"]["matchLabels"] == selector
    spread = deploy["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]
    assert spread == selector
    doc = RoutingDocument.from_json(objs[("ConfigMap", "sim-pool-routing")]["data"]["routing.json"])
    assert doc.shared_pool is not None
    assert [(b.tier, b.min_servers, b.max_servers) for b in doc.shared_pool.bins] == [("fast", 1, 3), ("slow", 1, 3)]


def test_pool_size_is_the_tiers_serving_replicas_clamped_to_the_pool_range():
    def size(body, replicas=None) -> int:
        return int(render(body, replicas)[("Deployment", "sim-pool-pool")]["spec"]["replicas"])

    assert size(pool_body(3, 6)) == 3  # tiers at min: 1 + 1, below the pool's min
    assert size(pool_body(2, 6), {"fast": 3, "slow": 2}) == 5  # the autoscaler's choice
    assert size(pool_body(2, 4), {"fast": 3, "slow": 3}) == 4  # capped at the pool's max


def test_routing_document_without_a_pool_is_unchanged():
    objs = render(sample_body("modelservice-simulator.yaml"))
    text = objs[("ConfigMap", "sim-llama-routing")]["data"]["routing.json"]
    assert "sharedPool" not in json.loads(text)


def _pool_pods(ms, n: int, ready: int) -> list[dict]:
    return [
        {
            "metadata": {
                "name": f"sim-pool-pool-{i}",
                "namespace": "default",
                "labels": {"kubetier.io/service": ms.name, "kubetier.io/role": "serving", POOL: "shared"},
            },
            "spec": {"nodeName": "on-demand-a"},
            "status": {"conditions": [{"type": "Ready", "status": "True" if i < ready else "False"}]},
        }
        for i in range(n)
    ]


def _observed(ms, ready: int) -> Observed:
    children = {}
    for o in desired(ms, Observed()):
        o["metadata"]["generation"] = 1
        if o["kind"] == "Deployment":
            n = o["spec"]["replicas"]
            o["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "availableReplicas": ready}
        children[(o["kind"], o["metadata"]["name"])] = o
    return Observed(children=children, pods=_pool_pods(ms, 3, ready), nodes=cluster_nodes())


def test_status_counts_the_pool():
    ms = parse(pool_body())
    up = compute_status(ms, _observed(ms, 3), NOW)
    conds = {c["type"]: (c["status"], c["reason"]) for c in up["conditions"]}
    assert conds["Ready"] == ("True", "AllTiersReady") and conds["Progressing"] == ("False", "Complete")
    assert conds["ScaledToZero"][0] == "False" and conds["SLOAtRisk"][1] == "NoMeasurements"
    assert up["replicaSummary"] == "3/3"
    short = compute_status(ms, _observed(ms, 1), NOW)
    conds = {c["type"]: (c["status"], c["reason"]) for c in short["conditions"]}
    assert conds["Ready"] == ("False", "TiersNotReady") and "pool 1/3 ready" in short["conditions"][0]["message"]
    assert short["replicaSummary"] == "1/3"


def test_autoscaler_sees_pool_servers_in_their_bins():
    docs = {
        "r1": {"models": {"m": {"servers": [{"id": "ns/p0", "tier": "fast", "pooled": True, "running": 2}]}}},
        "r2": {
            "models": {
                "m": {
                    "servers": [
                        {"id": "ns/p0", "tier": "slow", "pooled": True},
                        {"id": "ns/p1", "tier": "slow", "pooled": True},
                        {"id": "ns/t0", "tier": "fast"},
                    ]
                }
            }
        },
    }
    bins = router_bins(docs, "m")
    assert bins == {"ns/p0": "fast", "ns/p1": "slow"}  # first router decides; tiered servers are not pool bins
    pods = [
        {"metadata": {"name": n, "namespace": "ns", "labels": {"kubetier.io/role": "serving", POOL: "shared"}}}
        for n in ("p0", "p1", "p2")
    ]
    states = {s.server_id: s.tier for s in server_states(pods, {}, 1000, bins)}
    assert states == {"ns/p0": "fast", "ns/p1": "slow", "ns/p2": ""}  # p2 not binned by any router yet
