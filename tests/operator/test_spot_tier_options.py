"""Spot tier options: over-provisioning (a spot-only spare pool), zone spreading on the
preset's zone label, and the operator's own on-demand fallback (capacity.fallbackAfterSeconds:
decision, rendering, Events and status)."""

from __future__ import annotations

import datetime as dt

import pydantic
import pytest
from modelservice_builders import gpu_node, parse, sample_body

from kubetier.api.modelservice import ModelService
from kubetier.operator.modelservice.desired import desired
from kubetier.operator.modelservice.model import Observed, OperatorConfig
from kubetier.operator.modelservice.status import compute_status
from kubetier.operator.spot.fallback import decide, main_wanted
from kubetier.policy.spot import SpotConfig

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
CAP = "karpenter.sh/capacity-type"


def body_with(**batch_capacity):
    body = sample_body()
    batch = next(t for t in body["spec"]["tiers"] if t["name"] == "batch")
    batch["capacity"] = {**batch["capacity"], **batch_capacity}
    return body


def render(body, fallback=None, config=None):
    objs = desired(parse(body), Observed(), config or OperatorConfig(), None, fallback)
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def capacity_requirement(deploy, label=CAP):
    aff = deploy["spec"]["template"]["spec"].get("affinity", {}).get("nodeAffinity", {})
    for term in aff.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", []):
        for e in term["matchExpressions"]:
            if e["key"] == label:
                return e["operator"], e["values"]
    return None


def test_over_provision_adds_a_spot_only_spare_pool():
    objs = render(body_with(overProvision=2))
    spare = objs[("Deployment", "llama-8b-batch-spare")]
    assert spare["spec"]["replicas"] == 2
    assert capacity_requirement(spare) == ("In", ["spot"])
    assert spare["spec"]["template"]["metadata"]["labels"]["kubetier.io/role"] == "serving"
    assert spare["spec"]["template"]["metadata"]["labels"]["kubetier.io/pool"] == "spare"
    # the main pool keeps its need and its preference
    assert objs[("Deployment", "llama-8b-batch")]["spec"]["replicas"] == 1
    assert capacity_requirement(objs[("Deployment", "llama-8b-batch")]) is None
    assert ("Deployment", "llama-8b-interactive-spare") not in objs


@pytest.mark.parametrize(
    ("mode", "skew", "expected"),
    [("preferred", 1, "ScheduleAnyway"), ("required", 2, "DoNotSchedule"), ("off", 1, None)],
)
def test_zone_spread_follows_the_tier(mode, skew, expected):
    objs = render(body_with(zoneSpread=mode, zoneMaxSkew=skew))
    spec = objs[("Deployment", "llama-8b-batch")]["spec"]["template"]["spec"]
    if expected is None:
        assert "topologySpreadConstraints" not in spec
        return
    [spread] = spec["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == expected and spread["maxSkew"] == skew
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"


def test_zone_label_comes_from_the_operator_configuration():
    config = OperatorConfig.from_env({"KUBETIER_CAPACITY_SCHEME": "gke", "KUBETIER_ZONE_LABEL": "example.com/rack"})
    objs = render(body_with(zoneSpread="required"), config=config)
    [spread] = objs[("Deployment", "llama-8b-batch")]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "example.com/rack"
    interactive = objs[("Deployment", "llama-8b-interactive")]
    assert capacity_requirement(interactive, "cloud.google.com/gke-spot") == ("NotIn", ["true"])


def test_fallback_after_seconds_makes_the_main_pool_spot_only_with_an_on_demand_fallback():
    objs = render(body_with(fallbackAfterSeconds=60), fallback={"batch": 1})
    assert capacity_requirement(objs[("Deployment", "llama-8b-batch")]) == ("In", ["spot"])
    fb = objs[("Deployment", "llama-8b-batch-fallback")]
    assert capacity_requirement(fb) == ("NotIn", ["spot"])
    assert fb["spec"]["replicas"] == 1
    # rendered at zero before it is needed
    assert (
        render(body_with(fallbackAfterSeconds=60))[("Deployment", "llama-8b-batch-fallback")]["spec"]["replicas"] == 0
    )


@pytest.mark.parametrize(
    ("capacity", "message"),
    [
        ({"spot": "never", "overProvision": 1}, "capacity.overProvision requires capacity.spot"),
        (
            {"spot": "allowed", "fallbackAfterSeconds": 60},
            "capacity.fallbackAfterSeconds requires capacity.spot: preferred",
        ),
        ({"spot": "preferred", "fallbackAfterSeconds": 5}, "fallbackAfterSeconds"),
        ({"spot": "preferred", "zoneSpread": "always"}, "zoneSpread"),
    ],
)
def test_bad_spot_options_are_refused_naming_the_field(capacity, message):
    body = sample_body()
    body["spec"]["tiers"][2]["capacity"] = capacity
    with pytest.raises(pydantic.ValidationError, match=message):
        ModelService.model_validate(body)


# --------------------------------------------------------------------------- the fallback decision


def stamp(seconds_ago: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name, pool="main", ready_for=None, age=300.0, node="spot-1"):
    conditions = []
    if ready_for is not None:
        conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": stamp(ready_for)})
    else:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable"})
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": stamp(age),
            "labels": {
                "kubetier.io/service": "llama-8b",
                "kubetier.io/tier": "batch",
                "kubetier.io/role": "serving",
                "kubetier.io/pool": pool,
            },
        },
        "spec": {"nodeName": node} if ready_for is not None else {},
        "status": {"conditions": conditions},
    }


def fallback_deployment(replicas):
    return {("Deployment", "llama-8b-batch-fallback"): {"spec": {"replicas": replicas}}}


def decide_batch(pods, live_fallback=0, bound=60, return_after=300.0, replicas=None):
    ms = parse(body_with(fallbackAfterSeconds=bound))
    decisions = decide(
        ms,
        pods,
        fallback_deployment(live_fallback),
        main_wanted(ms, replicas),
        NOW.timestamp(),
        SpotConfig(return_after_s=return_after),
    )
    return decisions["batch"]


def test_pending_spot_replica_waits_for_the_bound_then_falls_back():
    waiting = decide_batch([pod("b-1", age=30)])
    assert waiting.replicas == 0 and waiting.event(SpotConfig(), 60) is None
    late = decide_batch([pod("b-1", age=61)])
    assert late.replicas == 1
    kind, reason, message = late.event(SpotConfig(), 60)
    assert (kind, reason) == ("Warning", "SpotFallback") and "0 -> 1" in message and "batch" in message


def test_a_replica_loading_on_a_spot_node_is_capacity_obtained_not_a_fallback():
    loading = pod("b-1", age=600)
    loading["spec"] = {"nodeName": "spot-1"}  # scheduled, model still loading (not Ready)
    assert decide_batch([loading]).replicas == 0
    # and an existing fallback stays until that replica is Ready and steady
    assert decide_batch([loading], live_fallback=1).replicas == 1


def test_a_replica_the_deployment_has_not_created_yet_is_not_spot_that_never_came():
    assert decide_batch([]).replicas == 0


def test_fallback_stays_until_spot_is_steady_then_returns():
    fresh = decide_batch([pod("b-1", ready_for=100)], live_fallback=1)
    assert fresh.replicas == 1 and fresh.event(SpotConfig(), 60) is None
    steady = decide_batch([pod("b-1", ready_for=301)], live_fallback=1)
    assert steady.replicas == 0
    kind, reason, message = steady.event(SpotConfig(return_after_s=300), 60)
    assert (kind, reason) == ("Normal", "ReturnToSpot") and "1 -> 0" in message


def test_fallback_covers_the_whole_shortfall_and_grows_at_once():
    pods = [pod("b-1", ready_for=500), pod("b-2", age=10), pod("b-3", age=10)]
    first = decide_batch(pods, live_fallback=0, replicas={"batch": 3})
    assert first.replicas == 0  # waited 10 s of 60
    grown = decide_batch(pods, live_fallback=1, replicas={"batch": 3})
    assert grown.replicas == 2  # a fallback already runs: the bound has passed for this episode


def test_status_counts_capacity_types_fallback_and_migrations_and_stays_ready_while_covered():
    ms = parse(body_with(fallbackAfterSeconds=60))
    nodes = [gpu_node("spot-1", capacity="spot"), gpu_node("od-1")]
    serving = []
    for tier, pool, role in (
        ("interactive", "main", "serving"),
        ("interactive", "main", "serving"),
        ("interactive", "standby", "standby"),
        ("standard", "floor", "serving"),
        ("standard", "main", "serving"),
    ):
        p = pod(f"{tier}-{len(serving)}", pool=pool, ready_for=500, node="od-1")
        p["metadata"]["labels"].update({"kubetier.io/tier": tier, "kubetier.io/role": role})
        serving.append(p)
    pending_spot = pod("batch-main", age=120)
    on_demand = pod("batch-fb", pool="fallback", ready_for=30, node="od-1")
    children = {(o["kind"], o["metadata"]["name"]): o for o in desired(ms, Observed(), None, None, {"batch": 1})}
    observed = Observed(
        children=children, pods=[*serving, pending_spot, on_demand], nodes=nodes, migrations={"batch": 7}
    )
    status = compute_status(ms, observed, NOW, fallback={"batch": 1})
    batch = next(t for t in status["tiers"] if t["name"] == "batch")
    assert batch["fallbackReplicas"] == 1 and batch["onDemandReplicas"] == 1 and batch["spotReplicas"] == 0
    assert batch["migrations"] == 7 and batch["readyReplicas"] == 1
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready
    # without the fallback covering it, the pending spot replica makes the tier short
    uncovered = compute_status(ms, observed, NOW, fallback={"batch": 0})
    ready = next(c for c in uncovered["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "batch" in ready["message"]


def test_migrations_are_summed_over_router_replicas():
    from kubetier.operator.modelservice.router_feed import aggregate_status, migrations_from_status

    def doc(n):
        return {"models": {"llama-3.1-8b": {"tiers": {"batch": {"requests": 10, "completed": 10, "migrations": n}}}}}

    merged = aggregate_status([doc(3), doc(4)])
    assert migrations_from_status(merged, "llama-3.1-8b") == {"batch": 7}
    assert migrations_from_status(merged, "other-model") == {}
