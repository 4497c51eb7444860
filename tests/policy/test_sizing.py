"""kubetier.policy.sizing: replicas within bounds, pools per spot policy, GPU need, and
whether the nodes can hold it (pure)."""

from __future__ import annotations

from kubetier.policy.sizing import (
    NodeCapacity,
    Pool,
    TierSizing,
    capacity_problem,
    pools,
    required_gpus,
    serving_replicas,
)


def tier(name="t", lo=1, hi=4, spot="never", floor=0, standby=0) -> TierSizing:
    return TierSizing(name, lo, hi, spot, floor, standby)


def node(name, gpus=8, capacity="on-demand", product="H100", schedulable=True) -> NodeCapacity:
    return NodeCapacity(name, gpus, capacity, product, schedulable)


def test_serving_replicas_is_the_choice_clamped_to_min_and_max():
    t = tier(lo=2, hi=6)
    assert serving_replicas(t) == 2
    assert serving_replicas(t, {"t": 4}) == 4
    assert serving_replicas(t, {"t": 99}) == 6
    assert serving_replicas(t, {"t": 0}) == 2
    assert serving_replicas(t, {"other": 5}) == 2


def test_pools_per_spot_policy_and_floor():
    assert pools(tier(spot="never", floor=3), 5) == [Pool("main", 5, "on-demand")]
    assert pools(tier(spot="allowed"), 5) == [Pool("main", 5, "either")]
    assert pools(tier(spot="preferred", floor=2), 5) == [Pool("floor", 2, "on-demand"), Pool("main", 3, "prefer-spot")]
    # The floor never exceeds the total.
    assert pools(tier(spot="allowed", floor=4), 1) == [Pool("floor", 1, "on-demand"), Pool("main", 0, "either")]


def test_required_gpus_counts_standby_and_on_demand_share():
    tiers = [tier("a", lo=2, spot="never", standby=1), tier("b", lo=3, spot="preferred", floor=1)]
    need = required_gpus(tiers, 2)
    assert (need.total, need.on_demand) == ((2 + 1 + 3) * 2, (2 + 1) * 2)
    assert required_gpus(tiers, 2, {"b": 4}).total == (2 + 1 + 4) * 2


def test_capacity_problems():
    tiers = [tier("a", lo=2, spot="never"), tier("b", lo=2, spot="preferred")]
    fleet = [node("od", 8), node("spot", 8, "spot")]
    assert capacity_problem(tiers, 2, "H100", fleet) is None
    assert capacity_problem(tiers, 0, None, []) is None, "CPU-only (simulator) services need no GPU"
    small = capacity_problem(tiers, 16, None, fleet)
    assert small is not None and small.reason == "NoNodeFitsReplica" and "gpusPerReplica" in small.message
    wrong = capacity_problem(tiers, 2, "A10G", fleet)
    assert wrong is not None and wrong.reason == "NoNodeFitsReplica" and "A10G" in wrong.message
    cordoned = capacity_problem(tiers, 2, None, [node("od", 8, schedulable=False)])
    assert cordoned is not None and cordoned.reason == "NoNodeFitsReplica"
    # 4 replicas x 3 GPUs = 12 > the 2 x (8 // 3 * 3) = 12 usable? equal fits; 5 does not.
    assert capacity_problem([tier("a", lo=4)], 3, None, [node("x", 8), node("y", 8)]) is None
    short = capacity_problem([tier("a", lo=5)], 3, None, [node("x", 8), node("y", 8)])
    assert short is not None and short.reason == "InsufficientGPUs" and "need 15" in short.message
    od = capacity_problem([tier("a", lo=3)], 4, None, [node("od", 8), node("s", 8, "spot")])
    assert od is not None and od.reason == "InsufficientOnDemandGPUs"
    # The autoscaler's choice counts: 1 replica fits where 3 do not.
    assert capacity_problem([tier("a", lo=1, hi=3)], 4, None, [node("od", 8)], {"a": 3}) is not None
    assert capacity_problem([tier("a", lo=1, hi=3)], 4, None, [node("od", 8)], {"a": 2}) is None
