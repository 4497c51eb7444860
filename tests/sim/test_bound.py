"""Rate scaling keeps the measured duration; the upper bound holds for every policy."""

from __future__ import annotations

import numpy as np
import pytest

from kubetier.policy.latency import load_profile
from kubetier.sim import runner
from kubetier.sim.bound import WorkModel, work_models
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


@pytest.mark.parametrize("seed", [11, 12, 13])
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
