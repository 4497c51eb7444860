"""compute_status / capacity_problem / transitions: pure, with the clock as a parameter."""

from __future__ import annotations

import datetime as dt

from modelservice_builders import cluster_nodes, gpu_node, parse, sample_body

from kubetier.operator.modelservice.desired import desired
from kubetier.operator.modelservice.model import Observed
from kubetier.operator.modelservice.status import capacity_problem, compute_status, status_changed, transitions

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def ready_pods(ms, tier, n, role="serving", node="od-a"):
    return [
        {
            "metadata": {
                "name": f"{tier}-{role}-{i}",
                "labels": {"kubetier.io/service": ms.name, "kubetier.io/tier": tier, "kubetier.io/role": role},
            },
            "spec": {"nodeName": node},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        for i in range(n)
    ]


def all_up(ms):
    children = {}
    for o in desired(ms, Observed()):
        if o["kind"] == "Deployment":
            n = o["spec"]["replicas"]
            o["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "availableReplicas": n}
        children[(o["kind"], o["metadata"]["name"])] = o
    for o in children.values():
        o["metadata"]["generation"] = 1
    pods = (
        ready_pods(ms, "interactive", 2)
        + ready_pods(ms, "interactive", 1, "standby")
        + ready_pods(ms, "standard", 2)
        + ready_pods(ms, "batch", 1, node="spot-a")
    )
    return Observed(children=children, pods=pods, nodes=cluster_nodes())


def test_everything_up_is_ready_and_slo_unknown_without_measurements():
    ms = parse(sample_body())
    status = compute_status(ms, all_up(ms), NOW)
    assert conds(status) == {
        "Ready": ("True", "AllTiersReady"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
        "SLOAtRisk": ("Unknown", "NoMeasurements"),
        "FieldsNotActedOn": ("False", "AllFieldsActedOn"),
        "ScaledToZero": ("False", "Serving"),
    }
    assert [c["type"] for c in status["conditions"]] == [
        "Ready",
        "Progressing",
        "Degraded",
        "SLOAtRisk",
        "FieldsNotActedOn",
        "ScaledToZero",
    ]
    assert all(
        set(c) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
        for c in status["conditions"]
    )
    assert {t["name"]: t["spotReplicas"] for t in status["tiers"]} == {"interactive": 0, "standard": 0, "batch": 1}


def test_attainment_below_target_is_slo_at_risk():
    ms = parse(sample_body())
    up = all_up(ms)
    observed = Observed(
        children=up.children,
        pods=up.pods,
        nodes=up.nodes,
        attainment={"interactive": 91.5, "standard": 97.0, "batch": 99.0},
    )
    status = compute_status(ms, observed, NOW)
    assert conds(status)["SLOAtRisk"] == ("True", "AttainmentBelowTarget")
    assert "interactive 91.5% < 95%" in next(c for c in status["conditions"] if c["type"] == "SLOAtRisk")["message"]
    assert status["tiers"][0]["attainmentPercent"] == 91.5
    assert conds(status)["Ready"] == ("True", "AllTiersReady")  # SLO risk is not part of the rollup


def test_last_transition_time_only_moves_on_change():
    ms = parse(sample_body())
    first = compute_status(ms, Observed(nodes=cluster_nodes()), NOW)
    later = NOW + dt.timedelta(minutes=5)
    same = compute_status(ms, Observed(nodes=cluster_nodes()), later, current=first)
    assert same == first and not status_changed(first, same) and transitions(first, same) == []
    up = compute_status(ms, all_up(ms), later, current=first)
    ready = next(c for c in up["conditions"] if c["type"] == "Ready")
    degraded = next(c for c in up["conditions"] if c["type"] == "Degraded")
    assert ready["lastTransitionTime"] == "2026-11-23T12:05:00Z"
    assert degraded["lastTransitionTime"] == "2026-11-23T12:00:00Z"
    events = transitions(first, up)
    assert {e["reason"] for e in events} == {"AllTiersReady", "Complete", "NoMeasurements"}
    assert all(e["type"] == "Normal" for e in events)


def test_capacity_problems_name_the_field():
    ms = parse(sample_body())
    assert capacity_problem(ms, Observed(nodes=cluster_nodes())) is None
    # 2+1 interactive + 2 standard + 1 batch = 6 GPUs, 3 of them (interactive 2 + floor 1) on-demand
    small = capacity_problem(ms, Observed(nodes=[gpu_node("a", gpus=4)]))
    assert small.reason == "InsufficientGPUs" and "need 6" in small.message and "spec.tiers" in small.message
    spot_only = capacity_problem(ms, Observed(nodes=[gpu_node("s", gpus=8, capacity="spot")]))
    assert spot_only.reason == "InsufficientOnDemandGPUs" and "need 3" in spot_only.message
    wrong_product = capacity_problem(ms, Observed(nodes=[gpu_node("a", product="NVIDIA-A10G")]))
    assert wrong_product.reason == "NoNodeFitsReplica" and "gpusPerReplica" in wrong_product.message
    cordoned = gpu_node("a")
    cordoned["spec"] = {"unschedulable": True}
    assert capacity_problem(ms, Observed(nodes=[cordoned])).reason == "NoNodeFitsReplica"


def test_unschedulable_pods_are_explained_in_progressing():
    ms = parse(sample_body())
    up = all_up(ms)
    stuck = {
        "metadata": {
            "name": "batch-x",
            "labels": {"kubetier.io/service": ms.name, "kubetier.io/tier": "batch", "kubetier.io/role": "serving"},
        },
        "spec": {},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/8 nodes are available: 8 Insufficient nvidia.com/gpu.",
                }
            ]
        },
    }
    status = compute_status(ms, Observed(children=up.children, pods=up.pods + [stuck], nodes=up.nodes), NOW)
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "PodsUnschedulable")
    assert (
        progressing["message"]
        == "batch: 1 pod(s) unschedulable: 0/8 nodes are available: 8 Insufficient nvidia.com/gpu."
    )
    assert conds(status)["Ready"] == ("False", "TiersNotReady")


def test_summaries_for_kubectl_get_join_every_tier_in_spec_order():
    ms = parse(sample_body())
    up = all_up(ms)
    status = compute_status(ms, up, NOW)
    assert status["tierSummary"] == "interactive,standard,batch"
    assert status["replicaSummary"] == "5/5"
    assert status["attainmentSummary"] == "-/-/-"
    measured = Observed(
        children=up.children, pods=up.pods[:-1], nodes=up.nodes, attainment={"interactive": 99.5, "batch": 80.0}
    )
    status = compute_status(ms, measured, NOW)
    assert status["replicaSummary"] == "4/5"
    assert status["attainmentSummary"] == "99.5/-/80"


def test_fields_not_acted_on_yet_are_a_condition_and_one_warning_event():
    from kubetier.operator.modelservice.not_acted_on import NOT_ACTED_ON_YET, NotActedOn, fields_not_acted_on

    # the live table is empty (standby promotion landed); the mechanism is checked with
    # a table of one entry
    table = (NotActedOn("prewarm.standby", lambda t: t.prewarm.standby > 0, "not promoted"),)

    body = sample_body()
    for tier in body["spec"]["tiers"]:
        tier["replicas"] = {"min": 1, "max": 1}
        tier["prewarm"] = {"standby": 0, "scaleToZero": False, "keepAliveSeconds": 300}
    plain = parse(body)
    assert fields_not_acted_on(plain, table) == []
    first = compute_status(plain, all_up(plain), NOW, not_acted_on=[])
    assert conds(first)["FieldsNotActedOn"] == ("False", "AllFieldsActedOn")
    assert all(e["reason"] != "AllFieldsActedOn" for e in transitions(None, first)), "no news is no Event"

    tier = body["spec"]["tiers"][0]
    tier["replicas"] = {"min": 1, "max": 3}
    tier["prewarm"] = {"standby": 1, "scaleToZero": False, "keepAliveSeconds": 60}
    body["spec"]["tiers"][1]["replicas"] = {"min": 0, "max": 1}
    body["spec"]["tiers"][1]["prewarm"]["scaleToZero"] = True
    ms = parse(body)
    assert fields_not_acted_on(ms) == [], "every field is acted on"
    lines = fields_not_acted_on(ms, table)
    name0, name1 = ms.spec.tiers[0].name, ms.spec.tiers[1].name
    assert [line.split(":")[0] for line in lines] == [f"spec.tiers[{name0}].prewarm.standby"]
    assert name1 not in " ".join(lines)
    status = compute_status(ms, all_up(ms), NOW, not_acted_on=lines, current=first)
    assert conds(status)["FieldsNotActedOn"] == ("True", "NotActedOnYet")
    without = compute_status(ms, all_up(ms), NOW, not_acted_on=[], current=first)
    assert conds(status)["Ready"] == conds(without)["Ready"], "a field not acted on does not change Ready"
    events = [e for e in transitions(first, status) if e["reason"] == "NotActedOnYet"]
    assert len(events) == 1 and events[0]["type"] == "Warning" and "prewarm.standby" in events[0]["message"]
    assert transitions(status, status) == [], "the Event is posted on the transition only"
    assert NOT_ACTED_ON_YET == ()
