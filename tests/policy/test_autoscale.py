"""Rules of kubetier.policy.autoscale, one test (or a few) per rule, with hand-checkable numbers.

Unless a test says otherwise a server targets 10 concurrent requests (target_per_server),
the stable window is 60 s and the panic window 6 s (the Knative constants), ticks every 2 s.
"""

from __future__ import annotations

import pytest

from kubetier.policy.autoscale import (
    AutoscalerConfig,
    ServerState,
    TierAutoscaler,
    TierDemand,
    TierScaling,
    merge_demand,
    pod_deletion_costs,
    target_concurrency,
)
from linear_latency_model import MODEL


def tier(**kw: object) -> TierScaling:
    base: dict[str, object] = dict(
        name="chat", ttft_s=1.0, tpot_s=0.05, target_per_server=10.0, min_replicas=1, max_replicas=8
    )
    base.update(kw)
    return TierScaling(**base)  # type: ignore[arg-type]


def servers(n: int, running: int = 0, tier_name: str = "chat", **kw: object) -> list[ServerState]:
    return [ServerState(server_id=f"s{i}", tier=tier_name, running=running, started_s=float(i), **kw) for i in range(n)]  # type: ignore[arg-type]


def run(
    scaler: TierAutoscaler,
    t0: float,
    t1: float,
    fleet: list[ServerState],
    demand: TierDemand | None = None,
    step: float = 2.0,
    free_gpus: int = 100,
    **kw: object,
):
    d = None
    t = t0
    while t <= t1 + 1e-9:
        dm = {demand.tier: demand} if demand else {}
        d = scaler.decide(t, dm, fleet, free_gpus, **kw)  # type: ignore[arg-type]
        t += step
    assert d is not None
    return d


# ---------------------------------------------------------------- target per server


def test_target_concurrency_from_the_latency_model_by_hand() -> None:
    # D(b, kv) = 10 + 0.1 (b-1) + kv/10,000 ms with kv = b * 50 (no prompt, 100 out):
    # 9.9 + 0.105 b <= 30 ms holds up to maxNumSeqs (100) -> 100 * 0.7 = 70
    assert target_concurrency(MODEL, 0.030, 0, 100) == pytest.approx(70.0)
    # 9.9 + 0.105 b <= 15 ms -> b <= 48.57 -> 48 * 0.7
    assert target_concurrency(MODEL, 0.015, 0, 100) == pytest.approx(48 * 0.7)
    # KV bound: 2,000 + 100 tokens per sequence, 100,000 cache -> 47 sequences
    assert target_concurrency(MODEL, 1.0, 2000, 100, utilization=1.0) <= 47
    with pytest.raises(ValueError):
        target_concurrency(MODEL, 0.0, 0, 100)


# ---------------------------------------------------------------- stable window


def test_stable_window_scales_to_concurrency_over_target() -> None:
    a = TierAutoscaler([tier()])
    fleet = servers(2, running=12)  # 24 concurrent / 10 per server -> 3 (ratio 1.2, no panic)
    d = run(a, 0, 60, fleet)
    assert d.tier("chat").desired == 3
    assert d.tier("chat").start == 1
    assert not d.tier("chat").panic
    assert "stable" in d.tier("chat").reason


def test_within_target_no_change() -> None:
    a = TierAutoscaler([tier()])
    d = run(a, 0, 60, servers(2, running=9))
    assert d.tier("chat").desired == 2 and not d.tier("chat").changed


# ---------------------------------------------------------------- panic


def test_panic_at_200_percent_scales_at_once_and_holds_for_a_stable_window() -> None:
    a = TierAutoscaler([tier()])
    run(a, 0, 58, servers(2, running=5))  # a minute of 10 concurrent on 2 servers
    burst = servers(2, running=25)  # 50 concurrent = 250% of 2 x 10
    d = run(a, 60, 66, burst).tier("chat")
    assert d.panic
    assert d.desired == 5, d.reason  # panic window average 50 / 10, not the stable average
    assert "panic" in d.reason
    # back to 5 concurrent on 5 servers: panic keeps the 5 until a stable window passes
    calm = servers(5, running=1)
    d = run(a, 68, 110, calm).tier("chat")
    assert d.panic and d.desired == 5 and not d.drain
    d = run(a, 112, 240, calm).tier("chat")
    assert not d.panic


def test_below_200_percent_is_no_panic() -> None:
    a = TierAutoscaler([tier()])
    run(a, 0, 58, servers(2, running=5))
    d = run(a, 60, 66, servers(2, running=19)).tier("chat")  # 38 concurrent = 190% of 20
    assert not d.panic


# ---------------------------------------------------------------- early scale-out


@pytest.mark.parametrize(
    "demand,needle",
    [
        (TierDemand(tier="chat", predicted_attainment_percent=91.0), "predicted attainment"),
        (TierDemand(tier="chat", waiting=1, oldest_wait_s=0.3), "held"),
        (TierDemand(tier="chat", rejected=2), "rejected"),
    ],
)
def test_scale_out_before_attainment_drops(demand: TierDemand, needle: str) -> None:
    a = TierAutoscaler([tier()])
    # idle servers: the stable rule alone would keep 2 (and learns nothing from 0 concurrent)
    d = a.decide(0.0, {"chat": demand}, servers(2, running=0), 100).tier("chat")
    assert d.desired == 3 and d.start == 1
    assert needle in d.reason


def test_no_early_step_while_a_start_is_in_flight() -> None:
    a = TierAutoscaler([tier()])
    fleet = servers(2, running=3) + [ServerState(server_id="new", tier="chat", ready=False)]
    d = a.decide(0.0, {"chat": TierDemand(tier="chat", rejected=5)}, fleet, 100).tier("chat")
    assert d.desired == 3 and d.start == 0


def test_saturated_engines_scale_out() -> None:
    a = TierAutoscaler([tier()])
    fleet = servers(2, running=2, kv_usage=0.85)
    d = a.decide(0.0, {}, fleet, 100).tier("chat")
    assert d.start == 1 and "saturated" in d.reason
    fleet = [servers(1, running=2, kv_usage=0.85)[0], ServerState(server_id="b", tier="chat", running=2)]
    assert TierAutoscaler([tier()]).decide(0.0, {}, fleet, 100).tier("chat").start == 0


# ---------------------------------------------------------------- from zero / to zero


def zero_tier(**kw: object) -> TierScaling:
    return tier(min_replicas=0, scale_to_zero=True, keep_alive_s=120.0, **kw)


def test_scale_from_zero_at_once() -> None:
    a = TierAutoscaler([zero_tier()])
    d = a.decide(0.0, {"chat": TierDemand(tier="chat", waiting=1)}, [], 100).tier("chat")
    assert d.desired == 1 and d.start == 1 and "scale from zero" in d.reason


def test_scale_to_zero_only_after_keep_alive_and_with_nothing_running() -> None:
    a = TierAutoscaler([zero_tier()])
    fleet = servers(2)
    d = run(a, 0, 118, fleet).tier("chat")
    assert d.desired >= 1 and not d.scaled_to_zero
    d = run(a, 120, 120, fleet).tier("chat")
    assert d.desired == 0 and d.scaled_to_zero and set(d.drain) == {"s0", "s1"}
    assert "scale to zero" in d.reason
    # a tier without scaleToZero keeps its min
    b = TierAutoscaler([tier(min_replicas=1, keep_alive_s=10.0)])
    assert run(b, 0, 300, servers(2)).tier("chat").desired >= 1


def test_keep_alive_override_and_warm_floor() -> None:
    a = TierAutoscaler([zero_tier()])
    d = a.decide(0.0, {}, servers(1), 100, keep_alive_s={"chat": 0.0}).tier("chat")
    assert d.scaled_to_zero
    b = TierAutoscaler([zero_tier()])
    d = b.decide(0.0, {}, [], 100, warm_floor={"chat": 1}).tier("chat")
    assert d.start == 1 and "pre-warm" in d.reason


# ---------------------------------------------------------------- scale in


def test_scale_in_waits_for_the_delay_then_drains_the_least_loaded_one_at_a_time() -> None:
    a = TierAutoscaler([tier()])
    fleet = [
        ServerState(server_id="busy", tier="chat", running=3),
        ServerState(server_id="light", tier="chat", running=1),
        ServerState(server_id="mid", tier="chat", running=2),
    ]  # 6 concurrent -> 1 server wanted
    d = run(a, 0, 28, fleet).tier("chat")
    assert d.desired == 3 and not d.drain and "deferred" in d.reason
    d = run(a, 30, 30, fleet).tier("chat")
    assert d.drain == ("light",) and d.desired == 2
    # while it drains nothing else is drained; once empty it is removed
    draining = [fleet[0], fleet[2], ServerState(server_id="light", tier="chat", draining=True, running=1)]
    d = a.decide(32.0, {}, draining, 100).tier("chat")
    assert not d.drain and not d.remove
    drained = [fleet[0], fleet[2], ServerState(server_id="light", tier="chat", draining=True, running=0)]
    d = a.decide(34.0, {}, drained, 100).tier("chat")
    assert d.remove == ("light",) and not d.drain


def test_no_scale_in_within_a_stable_window_of_pressure() -> None:
    a = TierAutoscaler([tier()])
    a.decide(0.0, {"chat": TierDemand(tier="chat", rejected=1)}, servers(3, running=10), 100)
    fleet = servers(3, running=1)
    d = run(a, 2, 58, fleet).tier("chat")
    assert not d.drain and "pressure" in d.reason
    d = run(a, 60, 60, fleet).tier("chat")
    assert d.drain


def test_min_max_and_on_demand_floor() -> None:
    a = TierAutoscaler([tier(min_replicas=1, max_replicas=3, on_demand_floor=2)])
    d = run(a, 0, 120, servers(2)).tier("chat")
    assert d.desired == 2 and not d.drain  # the on-demand floor
    d = TierAutoscaler([tier(max_replicas=3)]).decide(0.0, {}, servers(2, running=100), 100).tier("chat")
    assert d.desired == 3 and "max 3" in d.reason


# ---------------------------------------------------------------- GPUs, standby, priority


def test_free_gpus_bound_new_servers_in_priority_order() -> None:
    hi = tier(name="hi", priority=10, tpot_s=0.03)
    lo = tier(name="lo", priority=1)
    a = TierAutoscaler([lo, hi])
    fleet = servers(1, running=40, tier_name="hi") + [ServerState(server_id="l0", tier="lo", running=40)]
    d = a.decide(0.0, {}, fleet, free_gpus=3)
    assert d.tier("hi").start == 3  # 40 concurrent / 10 -> 4 wanted, 3 new, all the GPUs
    assert d.tier("lo").start == 0 and "free GPUs" in d.tier("lo").reason
    assert d.free_gpus_left == 0


def test_standby_is_promoted_before_a_cold_start_and_replaced() -> None:
    a = TierAutoscaler([tier(standby=1)])
    fleet = servers(1, running=18) + [ServerState(server_id="sb", tier="chat", standby=True)]
    d = a.decide(0.0, {}, fleet, free_gpus=4).tier("chat")
    assert d.promote == ("sb",) and d.start == 0
    assert d.start_standby == 1 and d.standby_desired == 1


def test_standby_needs_gpus_left_after_serving() -> None:
    a = TierAutoscaler([tier(standby=2)])
    d = a.decide(0.0, {}, servers(1, running=15), free_gpus=1).tier("chat")
    assert d.start == 1 and d.start_standby == 0


def test_every_decision_has_a_reason() -> None:
    a = TierAutoscaler([tier(), zero_tier(name="batch", tpot_s=0.2)])
    d = a.decide(0.0, {}, servers(1), 4)
    assert all(x.reason for x in d.tiers)
    assert a.last_reason("chat") == d.tier("chat").reason


# ---------------------------------------------------------------- helpers


def test_merge_demand_over_router_replicas() -> None:
    m = merge_demand(
        [
            TierDemand(tier="chat", waiting=2, oldest_wait_s=0.1, completed=90, attainment_percent=100.0, rejected=1),
            TierDemand(tier="chat", waiting=1, oldest_wait_s=0.4, completed=10, attainment_percent=50.0),
        ]
    )
    assert m.waiting == 3 and m.rejected == 1 and m.oldest_wait_s == 0.4
    assert m.attainment_percent == pytest.approx(95.0)
    with pytest.raises(ValueError):
        merge_demand([TierDemand(tier="a"), TierDemand(tier="b")])


def test_pod_deletion_cost_makes_the_drained_pod_go_first() -> None:
    costs = pod_deletion_costs(
        [
            ServerState(server_id="a", tier="chat", running=5),
            ServerState(server_id="b", tier="chat", running=1),
            ServerState(server_id="c", tier="chat", running=0, draining=True),
        ]
    )
    assert costs["c"] < costs["b"] < costs["a"]


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        AutoscalerConfig(panic_window_s=90)
    with pytest.raises(ValueError):
        tier(min_replicas=0)
    with pytest.raises(ValueError):
        TierAutoscaler([tier()]).decide(0.0, {}, [], -1)


def test_pressure_lowers_the_target_and_it_relaxes_back() -> None:
    a = TierAutoscaler([tier()])
    # 2 ready servers carry 8 concurrent and requests are rejected: a server saturates
    # near 4, so the target becomes 4 * 0.7 = 2.8 and 8 concurrent want 3 servers
    d = a.decide(0.0, {"chat": TierDemand(tier="chat", rejected=3)}, servers(2, running=4), 100).tier("chat")
    assert "2.8 per server" in d.reason
    assert d.desired == 3
    # quiet stable windows move it back toward the model's 10 (a quarter of the gap each)
    d = run(a, 62, 62, servers(3, running=2)).tier("chat")
    assert "4.6 per server" in d.reason  # 2.8 + (10 - 2.8) / 4
    d = run(a, 64, 1500, servers(3, running=2)).tier("chat")
    assert "10.0 per server" in d.reason


def test_surplus_standby_is_released_only_after_the_release_time() -> None:
    a = TierAutoscaler([tier(standby=0)])
    fleet = servers(1, running=2) + [ServerState(server_id="sb", tier="chat", standby=True)]
    d = a.decide(0.0, {}, fleet, 4).tier("chat")
    assert not d.remove_standby and d.standby_desired == 1
    d = a.decide(60.0, {}, fleet, 4).tier("chat")
    assert d.remove_standby == ("sb",)


def test_each_scale_in_waits_a_whole_delay_even_when_the_victim_vanishes_at_once() -> None:
    a = TierAutoscaler([tier()])
    d = run(a, 0, 30, servers(3, running=0)).tier("chat")
    assert len(d.drain) == 1
    # the drained pod is gone by the next tick: 2 left, still more than wanted
    d = run(a, 32, 58, servers(2, running=0)).tier("chat")
    assert not d.drain and "deferred" in d.reason
    d = run(a, 60, 60, servers(2, running=0)).tier("chat")
    assert len(d.drain) == 1
