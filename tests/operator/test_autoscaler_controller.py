"""The autoscaler controller against the HTTP-level fake API: router status documents in,
desired replicas, pod-deletion-cost marks, Events and status out."""

from __future__ import annotations

import datetime as dt

import kopf
from modelservice_builders import cluster_nodes, parse, sample_body
from test_reconcile_http import run_controllers

from kubetier.kube import KubeClient
from kubetier.operator.modelservice import autoscaler
from kubetier.operator.modelservice.autoscale_feed import (
    RouterCounters,
    router_load,
    server_states,
    tier_demands,
)
from kubetier.operator.modelservice.model import OperatorConfig
from kubetier.operator.modelservice.reconcile import reconcile

MODEL = "llama-3.1-8b"
T0 = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


def doc(tiers: dict, servers: list | None = None) -> dict:
    return {"models": {MODEL: {"tiers": tiers, "servers": servers or []}}}


def test_demand_is_merged_over_routers_and_counters_become_intervals() -> None:
    counters: dict[str, RouterCounters] = {}
    a = doc({"batch": {"requests": 10, "rejected": 0, "completed": 9, "waiting": 1, "attainmentPercent": 100.0}})
    b = doc({"batch": {"requests": 4, "rejected": 1, "completed": 3, "waiting": 2, "attainmentPercent": 50.0}})
    first = tier_demands({"r1": a, "r2": b}, MODEL, ["batch", "standard"], counters)
    assert first["batch"].waiting == 3 and first["batch"].arrivals == 0  # no interval yet
    a2 = doc({"batch": {"requests": 15, "rejected": 0, "completed": 12, "waiting": 0}})
    b2 = doc({"batch": {"requests": 2, "rejected": 1, "completed": 3, "waiting": 0}})  # b restarted
    second = tier_demands({"r1": a2, "r2": b2}, MODEL, ["batch", "standard"], counters)
    assert second["batch"].arrivals == 5 + 2  # r2 restarted: its new count is the interval
    assert second["batch"].rejected == 0 and second["batch"].completed == 3 + 0
    assert second["standard"].arrivals == 0


def test_server_states_from_pods_and_router_load() -> None:
    pods = [
        {
            "metadata": {
                "name": "p1",
                "namespace": "ns",
                "labels": {"kubetier.io/role": "serving", "kubetier.io/tier": "batch"},
                "creationTimestamp": "2026-01-02T00:00:00Z",
            },
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        },
        {
            "metadata": {
                "name": "p2",
                "namespace": "ns",
                "labels": {"kubetier.io/role": "serving", "kubetier.io/tier": "batch"},
                "deletionTimestamp": "2026-01-02T00:01:00Z",
            },
        },
    ]
    load = router_load(
        {
            "r1": doc({}, [{"id": "ns/p1", "running": 3, "kvTokens": 100}]),
            "r2": doc({}, [{"id": "ns/p1", "running": 5, "kvTokens": 50}]),
        },
        MODEL,
    )
    states = {s.server_id: s for s in server_states(pods, load, 1000)}
    assert states["ns/p1"].running == 5 and states["ns/p1"].ready and states["ns/p1"].kv_usage == 0.1
    assert states["ns/p2"].draining and not states["ns/p2"].ready


async def test_scale_out_on_held_requests_posts_an_event_and_reconciles(fake_kube) -> None:
    for node in cluster_nodes():
        fake_kube.put(node)
    body = sample_body()
    fake_kube.put(body)
    api = KubeClient.for_url(fake_kube.url)
    try:
        await reconcile(api, fake_kube.get("ModelService", "default", "llama-8b"), OperatorConfig(), T0)
        run_controllers(fake_kube)
        body = fake_kube.get("ModelService", "default", "llama-8b")
        ms = parse(body)
        memo = kopf.Memo()
        st = autoscaler.service_scaler(memo, body, ms)
        cfg = OperatorConfig()
        held = doc({"batch": {"requests": 0, "waiting": 0}})
        await autoscaler.autoscale_once(api, body, st, ms, cfg, now_s=0.0, docs={"r": held})
        # 8 requests held for the batch tier (1 server) and rejections: scale out early
        burst = doc({"batch": {"requests": 30, "rejected": 3, "waiting": 8}})
        out = await autoscaler.autoscale_once(api, body, st, ms, cfg, now_s=2.0, docs={"r": burst})
        assert out.changed.get("batch", (1, 1))[1] > 1, out
        events = [e for e in fake_kube.of_kind("Event") if e["reason"] == "ScaledOut"]
        assert events and "tier batch: 1 -> " in events[0]["message"] and "rejected" in events[0]["message"]
        await reconcile(api, body, cfg, T0, replicas=st.desired, scale_reasons=st.reasons)
        dep = fake_kube.get("Deployment", "default", "llama-8b-batch")
        assert dep["spec"]["replicas"] == st.desired["batch"]
        status = fake_kube.get("ModelService", "default", "llama-8b")["status"]
        batch = next(t for t in status["tiers"] if t["name"] == "batch")
        assert batch["desiredReplicas"] == st.desired["batch"] and "rejected" in batch["lastScaleReason"]
        assert status["scaleSummary"].split(" ")[2].startswith(f"{st.desired['batch']}/")
        # a restarted operator reads the decision back from status
        again = autoscaler.service_scaler(kopf.Memo(), fake_kube.get("ModelService", "default", "llama-8b"), ms)
        assert again.desired["batch"] == st.desired["batch"]
    finally:
        await api.aclose()


def test_demo_zero_service_is_admitted_and_starts_at_zero() -> None:
    from kubetier.api import admit
    from kubetier.demo import zero_service

    ms = admit(zero_service("demo"))
    tier = ms.spec.tiers[0]
    assert len(ms.spec.tiers) == 1 and tier.replicas.min == 0 and tier.prewarm.scale_to_zero
    assert tier.on_late == "queue"  # the router holds the first request while the server starts
