"""Fleet simulator: hand-checkable runs, spill, determinism, the shared policy code."""

from __future__ import annotations

import json

import pytest

import kubetier.policy.routing as routing
from kubetier.policy.latency import LatencyModel, load_profile
from kubetier.policy.routing import TierSLO
from kubetier.sim import runner
from kubetier.sim.engine import SimConfig, Simulator
from kubetier.sim.metrics import Collector, summarize
from kubetier.sim.scenario import parse_scenario
from kubetier.sim.workload import Arrival

# A profile where every iteration takes exactly 10 ms (decode grid flat, prefill table
# flat at the one-weight-read cost), so outcomes can be worked out by hand.
FLAT = {
    "name": "flat-10ms",
    "kvCapacityTokens": 100_000,
    "maxNumSeqs": 8,
    "maxNumBatchedTokens": 512,
    "decode": {"batchSizes": [1, 8], "kvTokens": [0, 100_000], "iterationMs": [[10, 10], [10, 10]]},
    "prefill": {"tokens": [512], "ms": [10]},
    "power": {
        "idleWatts": 50,
        "tdpWatts": 500,
        "decodeWatts": {"batchSizes": [1], "watts": [300]},
        "prefillWatts": 400,
    },
}


def _run(tiers, server_tiers, arrivals, model=None, kind="static-partition"):
    # The hand-checked engine tests route with the SLO-blind static partition (the SLO
    # policy would, rightly, refuse a 9 ms TPOT on a 10 ms/iteration server).
    model = model or LatencyModel.from_dict(FLAT)
    cfg = SimConfig(tiers=tiers, server_tiers=server_tiers, model=model, policy_kind=kind)
    col = Collector(len(tiers))
    sim = Simulator(cfg, sink=col)
    sim.run(iter(arrivals))
    return sim, col


def test_single_server_single_request_by_hand():
    # prompt 100 tokens: one 10 ms prefill iteration gives token 1 at 10 ms; tokens 2..5
    # come from four 10 ms decode iterations (the last at 50 ms).
    tiers = [TierSLO("only", ttft_ms=20, tpot_ms=9, priority=1, mean_output_tokens=5)]
    sim, col = _run(tiers, ["only"], [Arrival(0.0, 100, 5, 0)])
    assert sim.n_done == 1 and len(col) == 1
    assert col.ttft[0] == pytest.approx(0.010)
    assert col.tpot[0] == pytest.approx(0.010)
    # Deadline form: token k due at 20 + (k-1)*9 ms -> 20, 29, 38, 47, 56; out at
    # 10, 20, 30, 40, 50: all on time. Mean-TPOT form: 10 ms > 9 ms -> miss.
    assert col.ok[0] == 1
    stats = summarize(col, ["only"], [20], [9], [90])[0]
    assert stats.attainment_deadline == 100.0
    assert stats.attainment_ttft_tpot == 0.0
    assert sim.servers[0].busy_s == pytest.approx(0.050)


def test_single_server_deadline_miss_by_hand():
    # Token 5 is out at 50 ms; with TTFT 15 ms and TPOT 8 ms it is due at 15 + 32 = 47 ms.
    tiers = [TierSLO("only", ttft_ms=15, tpot_ms=8, priority=1, mean_output_tokens=5)]
    _, col = _run(tiers, ["only"], [Arrival(0.0, 100, 5, 0)])
    assert col.ok[0] == 0


def test_batching_and_chunked_prefill_by_hand():
    # Two prompts of 400 tokens with a 512-token budget: iteration 1 prefills 400 + 112,
    # iteration 2 the remaining 288 (and decodes request 1). Request 1: token 1 at 10 ms,
    # then tokens at 20, 30 -> done at 30 ms. Request 2: token 1 at 20 ms, done at 40 ms.
    tiers = [TierSLO("only", ttft_ms=1000, tpot_ms=100, priority=1, mean_output_tokens=3)]
    sim, col = _run(tiers, ["only"], [Arrival(0.0, 400, 3, 0), Arrival(0.0, 400, 3, 0)])
    assert sorted(round(x, 6) for x in col.ttft) == [0.01, 0.02]
    assert sim.servers[0].busy_s == pytest.approx(0.040)
    assert sim.servers[0].served == 2


def test_decode_stretch_is_cut_by_a_new_request():
    # Request 1 (output 50) decodes alone; request 2 arrives at 105 ms, mid-iteration:
    # the stretch is cut at 110 ms, request 2 prefills in the 110-120 ms iteration.
    tiers = [TierSLO("only", ttft_ms=1000, tpot_ms=100, priority=1, mean_output_tokens=50)]
    _, col = _run(tiers, ["only"], [Arrival(0.0, 100, 50, 0), Arrival(0.105, 100, 2, 0)])
    ttfts = sorted(round(x, 6) for x in col.ttft)
    assert ttfts == [0.01, 0.015]  # 120 ms - 105 ms


def test_two_tiers_forced_spill_to_the_tighter_servers():
    # The loose tier has no server of its own: its requests must spill onto the tight
    # tier's server (allowed: a server that meets 20 ms/token meets 200 ms/token).
    model = load_profile("llama-3.1-8b-h100")
    tiers = [
        TierSLO("tight", ttft_ms=1000, tpot_ms=40, priority=10, mean_output_tokens=32),
        TierSLO("loose", ttft_ms=5000, tpot_ms=200, priority=1, mean_output_tokens=32),
    ]
    arrivals = [Arrival(0.1 * i, 200, 32, i % 2) for i in range(20)]
    _sim, col = _run(tiers, ["tight"], arrivals, model=model, kind="slo")
    stats = summarize(col, ["tight", "loose"], [1000, 5000], [40, 200], [90, 90])
    assert stats[0].requests == 10 and stats[1].requests == 10
    assert stats[1].spilled == 10 and stats[0].spilled == 0
    assert stats[0].attainment_deadline == 100.0 and stats[1].attainment_deadline == 100.0


def test_no_spill_to_a_looser_tier():
    model = load_profile("llama-3.1-8b-h100")
    tiers = [
        TierSLO("tight", ttft_ms=1000, tpot_ms=40, priority=10, mean_output_tokens=32, on_late="reject"),
        TierSLO("loose", ttft_ms=5000, tpot_ms=200, priority=1, mean_output_tokens=32),
    ]
    sim, col = _run(tiers, ["loose"], [Arrival(0.0, 200, 8, 0)], model=model, kind="slo")
    # nothing may serve the tight request: it waits until it is late, then is rejected
    assert sim.n_done == 0 and sim.n_rejected == 1 and col.rejected[0] == 1


SYNTH = {
    "name": "tiny",
    "seed": 3,
    "profile": "llama-3.1-8b-h100",
    "tiers": [
        {"name": "interactive", "ttftMs": 400, "tpotMs": 25, "meanOutputTokens": 64},
        {"name": "batch", "ttftMs": 4000, "tpotMs": 100, "meanOutputTokens": 128},
    ],
    "workload": {
        "durationS": 20,
        "warmupS": 0,
        "cooldownS": 0,
        "sources": [
            {
                "synthetic": {
                    "arrival": "gamma",
                    "rate": 20,
                    "cv": 2,
                    "prompt": {"dist": "lognormal", "mean": 800, "sd": 600, "min": 16, "max": 8000},
                    "output": {"dist": "lognormal", "mean": 100, "sd": 80, "min": 1, "max": 1000},
                },
                "mix": {"interactive": 0.5, "batch": 0.5},
            }
        ],
    },
    "fleet": {"servers": {"interactive": 1, "batch": 1}},
    "goodput": {"minScale": 0.25, "maxScale": 8, "iterations": 2},
}


def _stats(sc, policy="kubetier", scale=1.0):
    r = runner.run_once(sc, policy, scale, load_profile(sc.profile), None)
    return [(t.requests, t.attainment_deadline, t.ttft_p99_ms, t.tpot_p90_ms, t.spilled) for t in r.tiers], r


def test_same_seed_same_result_other_seed_differs():
    sc = parse_scenario(SYNTH)
    a, ra = _stats(sc)
    b, _ = _stats(sc)
    assert ra.requests > 300
    assert a == b
    c, _ = _stats(parse_scenario({**SYNTH, "seed": 4}))
    assert c != a


def test_simulator_and_router_use_the_same_policy_function(monkeypatch):
    # The router's fleet builds kubetier.policy.routing.RoutingPolicy; the simulator must
    # call that very class's decide (no reimplementation): count calls through it.
    import kubetier.router.fleet as router_fleet
    import kubetier.sim.engine as sim_engine

    assert router_fleet.RoutingPolicy is routing.RoutingPolicy
    assert sim_engine.RoutingPolicy is routing.RoutingPolicy
    calls = []
    real = routing.RoutingPolicy.decide

    def spy(self, tier, prompt_tokens, waited_s):
        d = real(self, tier, prompt_tokens, waited_s)
        calls.append(d.action)
        return d

    monkeypatch.setattr(routing.RoutingPolicy, "decide", spy)
    sc = parse_scenario(SYNTH)
    _, r = _stats(sc)
    assert len(calls) >= r.requests > 0
    assert calls.count("route") == sum(t.requests - t.rejected for t in r.tiers)


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"tiers": [{"name": "a", "ttftMs": -1, "tpotMs": 20}]}, "tiers.0.ttftMs"),
        ({"fleet": {"servers": {"nope": 1}}}, "fleet.servers"),
        ({"fleet": {"servers": {"interactive": 1}, "pool": 3}}, "fleet"),
        ({"workload": {"sources": [{"trace": "x", "tier": "missing"}]}}, "workload.sources.0"),
        ({"workload": {"sources": [{"trace": "x", "tier": "batch", "mix": {"batch": 1}}]}}, "workload.sources.0"),
        ({"policies": ["kubetier", "magic"]}, "policies.1"),
        ({"goodput": {"minScale": 4, "maxScale": 2}}, "goodput.minScale"),
        ({"tiers": [{"name": "a", "ttftMs": 1, "tpotMs": 20, "colour": "red"}]}, "tiers.0.colour"),
    ],
)
def test_scenario_errors_name_the_field(patch, field):
    with pytest.raises(ValueError) as exc:
        parse_scenario({**SYNTH, **patch}, origin="s.yaml")
    assert field in str(exc.value)


def test_trace_reader_streams_azure_and_mooncake_columns(tmp_path):
    from kubetier.sim.workload import TraceMissingError, read_trace, resolve_trace

    csv = tmp_path / "code.csv"
    csv.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n2023-11-16 18:17:04.4799600,3180,8\n"
    )
    rows = list(read_trace(csv))
    assert rows[0] == (0.0, 4808, 10) and rows[1][0] == pytest.approx(0.5) and rows[1][1:] == (3180, 8)
    js = tmp_path / "m.jsonl"
    js.write_text(
        json.dumps({"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0]})
        + "\n"
        + json.dumps({"timestamp": 1500, "input_length": 10, "output_length": 3, "hash_ids": [1]})
        + "\n"
    )
    assert list(read_trace(js)) == [(0.0, 6758, 500), (1.5, 10, 3)]
    with pytest.raises(TraceMissingError, match="--traces-dir"):
        resolve_trace("azure_llm_2023_code", tmp_path)


def test_cli_writes_table_json_and_plots(tmp_path, capsys):
    import yaml

    from kubetier.sim.main import main

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SYNTH))
    out = tmp_path / "out"
    assert main(["--scenario", str(path), "--output", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "kubetier" in text and "least-loaded" in text and "x best base" in text
    doc = json.loads((out / "result.json").read_text())
    assert set(doc["policies"]) == {"kubetier", "round-robin", "least-loaded", "static-partition", "two-class"}
    assert doc["upperBound"]["rps"] > 0
    for png in ("attainment_vs_rate.png", "goodput.png", "load_gradient.png"):
        assert (out / png).stat().st_size > 1000
    assert main(["--scenario", str(tmp_path / "missing.yaml")]) == 2


def test_every_shipped_scenario_validates_and_uses_known_traces():
    from kubetier.sim.scenario import load_scenario, shipped_scenarios
    from kubetier.sim.workload import KNOWN_TRACES

    names = shipped_scenarios()
    assert {"azure-by-source", "mooncake-code-pool"} <= set(names)
    for name in names:
        sc = load_scenario(name)
        assert len(sc.tiers) == 3
        for src in sc.workload.sources:
            assert src.trace is None or src.trace in KNOWN_TRACES


def test_shipped_trace_scenario_runs_on_the_shipped_traces(monkeypatch):
    # The traces ship inside the package: this test never skips, anywhere.
    from kubetier.sim.scenario import load_scenario
    from kubetier.sim.workload import PACKAGED_TRACES_DIR, TRACES_ENV, default_traces_dir

    monkeypatch.delenv(TRACES_ENV, raising=False)
    assert default_traces_dir() == PACKAGED_TRACES_DIR
    assert (PACKAGED_TRACES_DIR / "azure_llm_2023_code.csv.gz").is_file()
    sc = load_scenario("azure-by-source")
    sc = sc.model_copy(update={"workload": sc.workload.model_copy(update={"duration_s": 60.0})})
    r = runner.run_once(sc, "kubetier", 1.0, load_profile(sc.profile), None)
    assert r.requests > 300
    assert all(t.requests > 0 for t in r.tiers)


def test_hooks_spot_preemption_migrates_and_power_cap_slows():
    from kubetier.sim.engine import Hook

    class Spot(Hook):
        # notice at 50 ms (stop routing to s0), preemption at 100 ms
        def schedule(self):
            return [
                (0.05, lambda sim, now: sim.drain_server(sim.servers[0])),
                (0.10, lambda sim, now: sim.remove_server(sim.servers[0])),
            ]

    model = LatencyModel.from_dict(FLAT)
    tiers = [TierSLO("only", ttft_ms=5000, tpot_ms=100, priority=1, mean_output_tokens=40)]
    cfg = SimConfig(
        tiers=tiers, server_tiers=["only", "only"], model=model, policy_kind="static-partition", hooks=[Spot()]
    )
    col = Collector(1)
    sim = Simulator(cfg, sink=col)
    sim.run(iter([Arrival(0.001 * i, 100, 40, 0) for i in range(6)]))
    assert sim.servers[0].removed
    assert sim.n_done == 6 and len(col) == 6  # every request finished despite the preemption
    assert sim.servers[1].served == 6  # the migrated continuations finished on s1

    # power capping: a 2x slowdown doubles every iteration of the flat 10 ms profile
    cfg = SimConfig(tiers=tiers, server_tiers=["only"], model=model, policy_kind="static-partition")
    sim = Simulator(cfg, sink=Collector(1))
    sim.set_slowdown(sim.servers[0], 2.0)
    sim.run(iter([Arrival(0.0, 100, 5, 0)]))
    assert sim.servers[0].busy_s == pytest.approx(0.100)


@pytest.mark.parametrize("arrival, cv_min, cv_max", [("poisson", 0.9, 1.1), ("gamma", 2.6, 3.4), ("diurnal", 0.9, 1.5)])
def test_synthetic_arrivals_and_lengths_have_the_asked_shape(arrival, cv_min, cv_max):
    import itertools
    import statistics

    from kubetier.sim.workload import LengthDist, synthetic

    rows = list(
        itertools.islice(
            synthetic(
                arrival,
                10.0,
                LengthDist("lognormal", 1000, 500, 1, 100_000),
                LengthDist("zipf", 200, 0, 1, 100_000),
                seed=1,
                cv=3.0,
                amplitude=0.5,
                period_s=100.0,
            ),
            40_000,
        )
    )
    t = [r[0] for r in rows]
    gaps = [b - a for a, b in zip(t, t[1:])]
    assert all(g >= 0 for g in gaps)
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.05)
    cv = statistics.stdev(gaps) / statistics.mean(gaps)
    assert cv_min <= cv <= cv_max
    assert statistics.mean(r[1] for r in rows) == pytest.approx(1000, rel=0.05)
    assert statistics.mean(r[2] for r in rows) == pytest.approx(200, rel=0.1)
