"""Rate scaling keeps the measured duration; the upper bound holds for every policy."""

from __future__ import annotations

import numpy as np
import pytest

from kubetier.policy.latency import load_profile
from kubetier.sim import runner
from kubetier.sim.bound import WorkModel, necessary_condition, work_models
from kubetier.sim.generate import generate
from kubetier.sim.scenario import parse_scenario
from kubetier.sim.workload import superpose


def test_superpose_keeps_the_duration_scales_the_count_and_nests():
    g = np.random.default_rng(0)
    t = np.sort(g.uniform(0, 100.0, 1000))
    p = g.integers(1, 100, 1000)
    o = g.integers(1, 100, 1000)
    k = np.zeros(1000, dtype=np.int64)
    out = {s: superpose(t, p, o, k, 100.0, s, seed=3) for s in (0.5, 1.0, 2.5, 4.0)}
    for s, (ts, *_rest) in out.items():
        assert ts.min() >= 0 and ts.max() < 100.0  # the window, not a compressed one
        assert np.all(np.diff(ts) >= 0)
        assert len(ts) == pytest.approx(1000 * s, rel=0.08)
    # copy 0 at scale >= 1 is the window itself; a larger scale keeps every row of a smaller one
    assert set(out[1.0][0].tolist()) == set(t.tolist())
    assert set(out[2.5][0].tolist()) <= set(out[4.0][0].tolist())
    assert set(out[0.5][0].tolist()) <= set(out[1.0][0].tolist())


def test_warmup_and_cooldown_are_simulated_but_not_measured():
    sc = parse_scenario(generate(5, max_servers=8, target_requests=400))
    r = runner.run_once(sc, "least-loaded", 1.0, load_profile(sc.profile), None)
    win = runner.build_window(sc, 1.0, None)
    assert win.measure_from_s == pytest.approx(0.1 * win.duration_s)
    assert 0 < r.measured_requests < r.requests == len(win.t)
    assert sum(t.requests for t in r.tiers) == r.measured_requests
    assert r.duration_s == win.duration_s


def test_work_model_charges_are_lower_bounds_of_the_profile():
    model = load_profile("llama-3.1-8b-h100")
    for wm in work_models(model):
        # the per-sequence decode charge never exceeds any real batch's share
        for b in (1, 8, 64, 256):
            u = model.decode_iteration_s(b, 0)
            assert np.interp(u, wm.hull_u, wm.hull_h) <= u / b + 1e-12
    wm = WorkModel.of(model, 0.0)
    w, _ = wm.request_work(np.array([1000, 10**6]), np.array([200, 10]), 2.0, 0.05)
    assert np.isfinite(w[0]) and w[0] > 0
    assert not np.isfinite(w[1])  # a million-token prompt cannot get a first token in 2 s


@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15])
def test_no_policy_passes_where_the_bound_says_impossible(seed):
    doc = generate(seed, max_servers=10, target_requests=600)
    doc["goodput"] = {"minScale": 1 / 256, "maxScale": 4096, "iterations": 3}
    sc = parse_scenario(doc)
    model = load_profile(sc.profile)
    shape = runner.workload_shape(sc, None)
    bound = runner.bound_scale(sc, model, None, iterations=6)
    passed = 0
    for policy in sc.policies:
        g = runner.search_goodput(sc, policy, model, shape.rate_rps, None, max(bound / 8, 1 / 256), [1] * len(sc.tiers))
        for r in g.runs:
            if r.meets_targets:
                passed += 1
                assert runner.load_ratio(sc, model, r.rate_scale, None) <= 1.0, (policy, r.rate_scale, bound)
        assert g.goodput_scale <= bound * 1.0001, (policy, g.goodput_scale, bound)
    assert passed > 0  # the check ran on real passing runs


def test_generator_min_duration_shortens_windows_but_keeps_the_draw():
    for seed in (3, 2002):
        long = generate(seed, max_servers=16, target_requests=600)
        short = generate(seed, max_servers=16, target_requests=600, min_duration_s=60.0)
        assert long["workload"]["durationS"] >= 300.0
        loosest_ttft_s = max(t["ttftMs"] for t in short["tiers"]) / 1000.0
        assert max(60.0, 5.0 * loosest_ttft_s) <= short["workload"]["durationS"] < long["workload"]["durationS"]
        # same tiers, fleet and sources: only the window (and the diurnal period with it) differs
        assert short["tiers"] == long["tiers"] and short["fleet"] == long["fleet"]
        assert [s.keys() for s in short["workload"]["sources"]] == [s.keys() for s in long["workload"]["sources"]]


def test_a_burst_is_charged_inside_its_own_interval_not_averaged_over_the_window():
    model = load_profile("llama-3.1-8b-h100")
    wms = work_models(model)
    tiers = [(1.0, 0.05, 100.0)]  # TTFT 1 s, TPOT 50 ms, every request on time
    n = 200
    prompt = np.full(n, 2000)
    output = np.full(n, 20)
    tier = np.zeros(n, dtype=np.int64)
    spread = np.linspace(0.0, 99.0, n)  # 2 requests/s over the whole window
    burst = np.linspace(0.0, 0.5, n)  # the same requests within half a second
    args = (prompt, output, tier, 0.0, 100.0, tiers, wms)
    calm = necessary_condition(spread, *args, n_servers=1)
    bursty = necessary_condition(burst, *args, n_servers=1)
    assert calm < 1.0 < bursty  # one server: fine when spread, impossible as a burst
    # the burst needs at least its 200 prompts' prefill charge within ~1.5 s (TTFT + 19 TPOT)
    wp, _ = wms[0].prefill_parts(prompt)
    assert bursty >= float(wp.sum()) / (1.0 + 19 * 0.05 + 0.5) * 0.99
    # a miss budget lets the fleet drop the most expensive: a 50% target halves the need
    half = necessary_condition(burst, prompt, output, tier, 0.0, 100.0, [(1.0, 0.05, 50.0)], wms, n_servers=1)
    assert half <= 0.51 * bursty


def test_prefix_work_grows_with_the_tokens_due_and_matches_the_whole_request():
    model = load_profile("llama-3.1-8b-h100")
    wm = WorkModel.of(model, 0.5)
    p = np.array([500.0, 500.0, 500.0])
    _, pf = wm.prefill_parts(p)
    ttft = 1.0 - wm.overhead_s
    q = np.array([0.0, 10.0, 99.0])
    w = wm.decode_prefix_work(q, p, pf, ttft, 0.04)
    assert w[0] == 0.0 and 0.0 < w[1] < w[2]
    whole, _ = wm.request_work(np.array([500]), np.array([100]), 1.0, 0.04)
    assert whole[0] == pytest.approx(wm.prefill_parts(np.array([500]))[0][0] + w[2])
    # context attention is charged: a 20k prompt costs more than 10x a 2k one
    wp, _ = wm.prefill_parts(np.array([2048, 20480]))
    assert wp[1] > 10.0 * wp[0] * 1.05


def test_best_partition_reports_a_split_that_passes_in_real_runs_and_stays_under_the_bound():
    from kubetier.sim.partition import best_partition, tier_alone_passes

    doc = generate(12, max_servers=8, target_requests=300, min_duration_s=60.0)
    sc = parse_scenario(doc)
    model = load_profile(sc.profile)
    bound = runner.bound_scale(sc, model, None, iterations=4)
    part = best_partition(sc, model, None, hi_scale=bound / 2, lo_scale=bound / 16, iterations=2, ceiling=bound)
    assert 0 < part.scale <= bound
    assert sum(part.servers.values()) == runner.n_servers(sc)
    for k, t in enumerate(sc.tiers):
        assert tier_alone_passes(sc, model, k, part.servers[t.name], part.scale, None)
    assert part.runs > 0
