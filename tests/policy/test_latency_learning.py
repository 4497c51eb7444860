"""Online latency correction, learned traffic statistics and the shared waiting order."""

from __future__ import annotations

import math
import random

import pytest

from kubetier.policy.latency import load_profile
from kubetier.policy.latency_learning import MAX_SCALE, LatencyCorrection
from kubetier.policy.routing import RoutingPolicy, ServerLoad, TierSLO
from kubetier.policy.traffic import TierTraffic, quantise
from kubetier.policy.waiting import waiting_key

TIERS = [
    TierSLO("interactive", ttft_ms=500, tpot_ms=30, priority=100, mean_output_tokens=200),
    TierSLO("batch", ttft_ms=8000, tpot_ms=150, priority=10, mean_output_tokens=200),
]


def _policy(n: int = 5) -> RoutingPolicy:
    model = load_profile("llama-3.1-8b-h100")
    p = RoutingPolicy(TIERS)
    for i in range(n):
        p.upsert_server(ServerLoad(f"s{i}", "interactive", model))
    return p


def test_correction_converges_to_the_true_factor_and_ignores_one_broken_server():
    p = _policy()
    learn = LatencyCorrection(p)
    learn.reset()
    rng = random.Random(1)
    for k in range(400):
        sid = f"s{k % 5}"
        observed = 0.010 * 1.3 * math.exp(rng.gauss(0, 0.2))
        if sid == "s0":
            observed *= 50.0  # a broken exporter: clipped, then outvoted by the median
        learn.observe(sid, 0.010, observed)
    scale = next(iter(p._costs.values())).scale
    assert scale == pytest.approx(1.3, rel=0.05)
    learn.reset()
    assert next(iter(p._costs.values())).scale == 1.0


def _most_running_admitted(p: RoutingPolicy) -> int:
    best = -1
    for r in range(0, 256, 4):
        p.observe("s0", r, r * 600, 0)
        if p.decide("interactive", 300, 0.0).action == "route":
            best = r
    return best


def test_correction_changes_admission_and_is_clipped():
    p = _policy(1)
    learn = LatencyCorrection(p, min_obs=1)
    learn.reset()
    on_profile = _most_running_admitted(p)
    for _ in range(50):
        learn.observe("s0", 0.010, 0.100)  # 10x slower: clipped to MAX_SCALE
    assert next(iter(p._costs.values())).scale == MAX_SCALE
    # a server known to be twice as slow takes a tight request at a much smaller batch
    assert 0 <= _most_running_admitted(p) < on_profile / 2
    learn.reset()


def test_traffic_means_follow_observations_from_the_prior():
    tr = TierTraffic(prior_output_tokens=256, prior_prompt_tokens=1024)
    assert tr.horizon() == 256 and tr.probe_prompt() == 1024
    for _ in range(2000):
        tr.observe_prompt(4000)
        tr.observe_output(30)
    assert tr.probe_prompt() == pytest.approx(4000, rel=0.05)
    assert tr.horizon() == pytest.approx(30, rel=0.1)
    assert tr.refill()[1] == pytest.approx(4000 / 30, rel=0.1)
    assert quantise(100.0)[1] == pytest.approx(100.0, rel=0.07)


def test_policy_learns_a_tier_from_admissions_and_completions():
    p = _policy(1)
    for _ in range(3000):
        p.on_admit("s0", 3000, 200, tier="interactive")
        p.on_request_done("interactive", 20)
    assert p.traffic["interactive"].probe_prompt() == pytest.approx(3000, rel=0.05)
    assert p.traffic["interactive"].horizon() == pytest.approx(20, rel=0.1)
    assert p.traffic["batch"].horizon() == int(quantise(200)[1])  # untouched: the configured prior


def test_router_and_simulator_share_the_waiting_order_and_learning_code():
    import kubetier.router.fleet as router_fleet
    import kubetier.sim.engine as sim_engine

    assert router_fleet.waiting_key is waiting_key
    assert sim_engine.waiting_key is waiting_key
    assert sim_engine.LatencyCorrection is LatencyCorrection
    # higher priority first, then the earlier arrival
    assert sorted([waiting_key(10, 0.0, 1), waiting_key(100, 5.0, 2), waiting_key(100, 1.0, 3)]) == [
        waiting_key(100, 1.0, 3),
        waiting_key(100, 5.0, 2),
        waiting_key(10, 0.0, 1),
    ]
