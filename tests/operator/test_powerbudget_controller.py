"""The PowerBudget controller's control tick against the HTTP fake apiserver: caps written
to the low tier's node first, lifted with hysteresis, missing agents counted at their
maximum, status and Events."""

from __future__ import annotations

import json

import pytest
from fake_kube import FakeKube

from kubetier.api.node_power import POWER_CAP_ANNOTATION, POWER_REPORT_ANNOTATION
from kubetier.kube import KubeClient
from kubetier.operator.powerbudget import domain
from kubetier.operator.powerbudget.controller import DomainMemory, lift_all, tick

DOMAIN_LABEL = "kubetier.io/power-domain"


def node(name: str, gpus: int = 1, domain_name: str = "rack-a") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {DOMAIN_LABEL: domain_name}, "annotations": {}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


def pod(name: str, node_name: str, tier: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "team",
            "labels": {"kubetier.io/service": "chat", "kubetier.io/tier": tier},
        },
        "spec": {"nodeName": node_name},
        "status": {"phase": "Running"},
    }


MODELSERVICE = {
    "apiVersion": "kubetier.io/v1alpha1",
    "kind": "ModelService",
    "metadata": {"name": "chat", "namespace": "team"},
    "spec": {
        "tiers": [
            {"name": "interactive", "ttftMs": 500, "tpotMs": 30, "priority": 100},
            {"name": "standard", "ttftMs": 1500, "tpotMs": 60, "priority": 50},
            {"name": "batch", "ttftMs": 8000, "tpotMs": 150, "priority": 10},
        ]
    },
}

BUDGET = {
    "apiVersion": "kubetier.io/v1alpha1",
    "kind": "PowerBudget",
    "metadata": {"name": "rack-a", "generation": 1},
    "spec": {
        "nodeSelector": {"matchLabels": {DOMAIN_LABEL: "rack-a"}},
        "budgetWatts": 2000,
        "capThresholdPercent": 90,
        "uncapThresholdPercent": 80,
        "hardCapThresholdPercent": 97,
        "escalateAfterSeconds": 2,
        "liftAfterSeconds": 5,
        "staleAfterSeconds": 5,
    },
}


def report(fake: FakeKube, name: str, watts: float, at: float, cap: float | None = None) -> None:
    n = fake.get("Node", None, name)
    n["metadata"]["annotations"][POWER_REPORT_ANNOTATION] = json.dumps(
        {
            "node": name,
            "backend": "simulated",
            "observedAt": at,
            "gpus": [{"index": 0, "watts": watts, "maxWatts": 700.0, **({"capWatts": cap} if cap else {})}],
        }
    )
    fake.store(n)


def report_all(fake: FakeKube, watts: float, at: float) -> None:
    """Every engine node of the domain reports ``watts`` at ``at``."""
    for name in ("n-int", "n-std", "n-batch"):
        report(fake, name, watts, at=at)


@pytest.fixture
def cluster():
    with FakeKube() as fake:
        for name, tier in (("n-int", "interactive"), ("n-std", "standard"), ("n-batch", "batch")):
            fake.put(node(name))
            fake.put(pod(f"{tier}-0", name, tier))
        fake.put(node("other-rack", domain_name="rack-b"))
        fake.put(MODELSERVICE)
        fake.put(BUDGET)
        yield fake


def cap_of(fake: FakeKube, name: str) -> str | None:
    return fake.get("Node", None, name)["metadata"].get("annotations", {}).get(POWER_CAP_ANNOTATION)


def events(fake: FakeKube) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in fake.of_kind("Event")]


async def run_lift_all(fake: FakeKube) -> list[str]:
    """The controller's clean-up when the budget is deleted: every cap and taint lifted."""
    budget = fake.get("PowerBudget", None, "rack-a")
    assert budget is not None
    api = KubeClient.for_url(fake.url)
    try:
        return await lift_all(api, budget)
    finally:
        await api.aclose()


async def run_tick(fake: FakeKube, memory: DomainMemory, now: float):
    api = KubeClient.for_url(fake.url)
    try:
        return await tick(api, fake.get("PowerBudget", None, "rack-a"), memory, clock=lambda: now)
    finally:
        await api.aclose()


async def test_above_the_cap_threshold_the_low_tier_is_capped_first(cluster):
    fake, memory = cluster, DomainMemory()
    report_all(fake, 620, at=100)  # 1860 W = 93 % of 2000 W
    r = await run_tick(fake, memory, 100)
    assert cap_of(fake, "n-batch") == "420"  # 60 % of 700 W
    assert cap_of(fake, "n-std") is None and cap_of(fake, "n-int") is None
    assert cap_of(fake, "other-rack") is None  # not in this domain
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["level"] == "Capping" and st["drawnWatts"] == 1860 and st["percentOfBudget"] == 93.0
    assert st["cappedByTier"] == {"batch": 1, "standard": 0, "interactive": 0}
    assert st["cappedSummary"] == "batch 1/1, standard 0/1, interactive 0/1"
    assert st["cappedNodes"] == 1 and st["cappedPods"] == 1 and st["nodes"] == 3 and st["servers"] == 3
    assert {c["type"]: c["status"] for c in st["conditions"]}["Capping"] == "True"
    assert r.events == [] or r.events[0][1] == "CapsApplied"

    # Still hot 2 s later (escalateAfterSeconds): standard next, interactive never below the hard threshold.
    report_all(fake, 620, at=102)
    await run_tick(fake, memory, 102)
    assert cap_of(fake, "n-std") == "420" and cap_of(fake, "n-int") is None
    report_all(fake, 620, at=110)
    await run_tick(fake, memory, 110)
    assert cap_of(fake, "n-int") is None


async def test_caps_lift_with_hysteresis_and_events_tell_the_story(cluster):
    fake, memory = cluster, DomainMemory()
    report_all(fake, 500, at=100)  # 75 %: normal
    await run_tick(fake, memory, 100)
    report_all(fake, 620, at=101)
    await run_tick(fake, memory, 101)
    assert cap_of(fake, "n-batch") == "420"
    assert ("Normal", "CapsApplied") in events(fake)
    for t in (102, 104, 107):
        report_all(fake, 300, at=t)  # 45 %: below the uncap threshold
        await run_tick(fake, memory, t)
    assert cap_of(fake, "n-batch") is None  # 5 s below the uncap threshold: lifted
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["level"] == "Normal" and st["cappedNodes"] == 0
    assert ("Normal", "CapsLifted") in events(fake)
    assert st["secondsAboveCap"] == pytest.approx(1.0)  # 101 -> 102 at 93 %


async def test_hard_threshold_brakes_every_node_and_counts_the_event(cluster):
    fake, memory = cluster, DomainMemory()
    report_all(fake, 660, at=100)  # 99 %
    await run_tick(fake, memory, 100)
    assert {cap_of(fake, n) for n in ("n-int", "n-std", "n-batch")} == {"315"}  # 45 % of 700 W
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["level"] == "Braking" and st["brakeEvents"] == 1


async def test_a_missing_agent_counts_at_its_maximum_and_makes_the_controller_cap(cluster):
    fake, memory = cluster, DomainMemory()
    report(fake, "n-int", 300, at=100)
    report(fake, "n-std", 300, at=100)
    # n-batch never reported: counted at 700 W -> 1300 W = 65 %: fine.
    await run_tick(fake, memory, 100)
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["staleNodes"] == ["n-batch"] and st["drawnWatts"] == 1300
    assert {c["type"]: c["status"] for c in st["conditions"]}["TelemetryFresh"] == "False"
    assert ("Warning", "TelemetryMissing") in events(fake)
    # Now the other two agents stop too (last report 100, stale after 5 s): 2100 W, 105 %: brake.
    await run_tick(fake, memory, 106)
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["level"] == "Braking" and sorted(st["staleNodes"]) == ["n-batch", "n-int", "n-std"]
    assert cap_of(fake, "n-int") == "315"


async def test_status_counters_survive_a_controller_restart(cluster):
    fake = cluster
    report_all(fake, 660, at=100)
    memory = DomainMemory()
    await run_tick(fake, memory, 100)
    await run_tick(fake, memory, 104)
    before = fake.get("PowerBudget", None, "rack-a")["status"]
    assert before["secondsAboveHardCap"] == pytest.approx(4.0) and before["brakeEvents"] == 1
    restarted = DomainMemory()
    await run_tick(fake, restarted, 105)
    await run_tick(fake, restarted, 106)
    after = fake.get("PowerBudget", None, "rack-a")["status"]
    assert after["secondsAboveHardCap"] == pytest.approx(5.0)
    assert after["brakeEvents"] == 1  # the same brake, not a new one


async def test_deleting_the_budget_lifts_its_caps(cluster):
    fake, memory = cluster, DomainMemory()
    report_all(fake, 660, at=100)
    await run_tick(fake, memory, 100)
    lifted = await run_lift_all(fake)
    assert sorted(lifted) == ["n-batch", "n-int", "n-std"]
    assert all(cap_of(fake, n) is None for n in lifted)


def test_label_selector_renders_every_operator():
    from kubetier.api.powerbudget import NodeSelector

    sel = NodeSelector.model_validate(
        {
            "matchLabels": {"a": "1"},
            "matchExpressions": [
                {"key": "b", "operator": "In", "values": ["x", "y"]},
                {"key": "c", "operator": "NotIn", "values": ["z"]},
                {"key": "d", "operator": "Exists"},
                {"key": "e", "operator": "DoesNotExist"},
            ],
        }
    )
    assert domain.label_selector(sel) == "a=1,b in (x,y),c notin (z),d,!e"


def test_node_with_several_tiers_takes_the_most_protected_and_gpu_less_nodes_are_skipped():
    tiers = domain.tiers_of([MODELSERVICE])
    nodes = [node("shared"), {"metadata": {"name": "cpu"}, "status": {"allocatable": {}}}]
    pods = [pod("b", "shared", "batch"), pod("i", "shared", "interactive")]
    (only,) = domain.domain_nodes(nodes, pods, tiers)
    assert only.name == "shared" and only.tier == "interactive" and only.engine_pods == 2
    (idle,) = domain.domain_nodes([node("idle")], [], tiers)
    assert idle.tier == domain.IDLE_TIER and idle.priority < 0


async def test_p99_window_holds_measured_draw_only(cluster):
    fake, memory = cluster, DomainMemory()
    report(fake, "n-int", 300, at=100)
    report(fake, "n-std", 300, at=100)
    await run_tick(fake, memory, 100)  # n-batch never reported: counted at 700 W, not in the window
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["drawnWatts"] == 1300 and st.get("p99Watts") is None
    report(fake, "n-batch", 200, at=101)
    report(fake, "n-int", 300, at=101)
    report(fake, "n-std", 300, at=101)
    await run_tick(fake, memory, 101)
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["p99Watts"] == 800 and st["serversAllowed"] == 3


def unschedulable(name: str, message: str, reason: str | None = "Unschedulable") -> dict:
    """A batch replica the scheduler left Pending (PodScheduled False), saying ``message``."""
    p = pod(name, "", "batch")
    p["spec"] = {}
    scheduled = {
        "type": "PodScheduled",
        "status": "False",
        **({"reason": reason} if reason else {}),
        "message": message,
    }
    p["status"] = {"phase": "Pending", "conditions": [scheduled]}
    return p


def taints_of(fake: FakeKube, name: str) -> list[dict]:
    return (fake.get("Node", None, name).get("spec") or {}).get("taints") or []


async def test_placement_closes_idle_nodes_at_the_allowed_count_judged_on_measured_p99(cluster):
    """oversubscriptionRatio on placement: 1-GPU nodes of 700 W, budget 2000 W: 2 servers
    nominal; 3 are placed. Idle GPU nodes are tainted while placed >= allowed, opened
    (exactly as many as allowed) when the ratio and the measured p99 allow more, closed
    again when the measured p99 rises; a replica the taint kept Pending gets an Event."""
    fake, memory = cluster, DomainMemory()
    gpu_taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    for name in ("n-idle-1", "n-idle-2"):
        fake.put({**node(name), "spec": {"taints": [gpu_taint]}})
    all_nodes = ("n-int", "n-std", "n-batch", "n-idle-1", "n-idle-2")

    def reports(at: float, watts: float) -> None:
        for name in all_nodes:
            report(fake, name, watts if not name.startswith("n-idle") else 80, at=at)

    # No measurement yet (one node never reported): only budget/TDP = 2 servers; 3 are placed.
    await run_tick(fake, memory, 100)
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["servers"] == 3 and st["serversAllowed"] == 2
    assert st["closedNodes"] == ["n-idle-1", "n-idle-2"]
    for name in ("n-idle-1", "n-idle-2"):
        assert taints_of(fake, name) == [
            gpu_taint,
            {"key": "kubetier.io/power-budget", "value": "rack-a", "effect": "NoSchedule"},
        ]
    assert all(taints_of(fake, n) == [] for n in ("n-int", "n-std", "n-batch"))  # placed servers: never tainted
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["PlacementHeld"]["status"] == "True" and "n-idle-1" in conds["PlacementHeld"]["message"]
    assert conds["Oversubscribed"]["status"] == "True"
    assert ("Normal", "PlacementHeld") in events(fake)

    # A replica the scheduler could not place because of the taint: said on the pod and in status.
    fake.put(
        unschedulable(
            "batch-1",
            "0/5 nodes are available: 2 node(s) had untolerated taint "
            "{kubetier.io/power-budget: rack-a}, 3 Insufficient nvidia.com/gpu.",
        )
    )
    # kube-scheduler 1.34 does not name the taint: counted while this domain is closed.
    fake.put(
        unschedulable(
            "batch-3", "0/8 nodes are available: 1 node(s) had untolerated taint(s), 7 node(s) were unschedulable."
        )
    )
    # Another budget's taint, named: not ours.
    fake.put(
        unschedulable(
            "batch-4",
            "0/5 nodes are available: 2 node(s) had untolerated taint {kubetier.io/power-budget: rack-b}.",
            reason=None,
        )
    )
    reports(101, 266.0)  # measured: 3 x 266 W = 800 W placed
    await run_tick(fake, memory, 101)
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["heldPods"] == ["team/batch-1", "team/batch-3"]
    pod_events = [e for e in fake.of_kind("Event") if e["involvedObject"]["kind"] == "Pod"]
    assert [e["reason"] for e in pod_events] == ["HeldByPowerBudget", "HeldByPowerBudget"]
    assert "3 GPU servers placed, 3 allowed" in pod_events[0]["message"]
    # ratio 1.3: at most floor(2000/700 x 1.3) = 3; the measured p99 (958 W incl. idle nodes) would allow 5.
    assert st["serversAllowed"] == 3 and st["closedNodes"] == ["n-idle-1", "n-idle-2"]

    # Ratio 2.0: up to 5; the measured p99 allows them: exactly 2 idle nodes open.
    pb = fake.get("PowerBudget", None, "rack-a")
    pb["spec"]["oversubscriptionRatio"] = 2.0
    fake.store(pb)
    await run_tick(fake, memory, 102)
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["serversAllowed"] == 5 and st["closedNodes"] == [] and st["heldPods"] == []
    assert taints_of(fake, "n-idle-1") == [gpu_taint] and taints_of(fake, "n-idle-2") == [gpu_taint]
    assert ("Normal", "PlacementOpened") in events(fake)

    # The measured p99 rises to 600 W per placed server (3 x 600 + 2 x 80 = 1960 W):
    # 0.9 x 2000 / (1960 / 3) = 2.8 -> only the 2 nominal servers: closed again.
    reports(103, 600.0)
    await run_tick(fake, memory, 103)
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["p99Watts"] == 1960 and st["serversAllowed"] == 2 and st["closedNodes"] == ["n-idle-1", "n-idle-2"]

    # One idle node gets a server: it is never tainted; with room for one more, one idle node opens.
    pb["spec"]["oversubscriptionRatio"] = 2.0
    memory2 = DomainMemory()  # a fresh window: measured 266 W per server again
    fake.put(pod("batch-2", "n-idle-1", "batch"))
    reports(104, 266.0)
    await run_tick(fake, memory2, 104)
    st = fake.get("PowerBudget", None, "rack-a")["status"]
    assert st["servers"] == 4 and st["serversAllowed"] == 5 and st["closedNodes"] == []

    # Deleting the budget removes its taints (and only its taints).
    memory3 = DomainMemory()
    reports(105, 266.0)
    pb["spec"]["oversubscriptionRatio"] = 1.0
    fake.store(pb)
    await run_tick(fake, memory3, 105)
    assert taints_of(fake, "n-idle-2")[-1]["key"] == "kubetier.io/power-budget"
    await run_lift_all(fake)
    assert taints_of(fake, "n-idle-2") == [gpu_taint]


def test_nodes_to_close_keeps_exactly_the_room_open():
    tiers = {("team", "chat"): {"batch": (10, 150.0)}}
    nodes = [node(n) for n in ("a", "b", "c", "d")]
    dnodes = domain.domain_nodes(nodes, [pod("p", "a", "batch")], tiers)
    assert domain.nodes_to_close(dnodes, 1) == {"b", "c", "d"}
    assert domain.nodes_to_close(dnodes, 2) == {"c", "d"}  # one more server may land: one idle node open
    assert domain.nodes_to_close(dnodes, 0) == {"b", "c", "d"}  # over the limit: nothing evicted, all idle closed
    assert domain.nodes_to_close(dnodes, 9) == set()


def test_the_trend_lookahead_reaches_the_policy():
    from kubetier.api.powerbudget import PowerBudgetSpec

    spec = PowerBudgetSpec.model_validate(BUDGET["spec"])
    assert spec.trend_lookahead_seconds == 2.0  # the default (docs/power.md: the sweep behind it)
    assert domain.policy_config(spec).trend_lookahead_s == 2.0
    off = PowerBudgetSpec.model_validate({**BUDGET["spec"], "trendLookaheadSeconds": 0})
    assert domain.policy_config(off).trend_lookahead_s == 0.0
