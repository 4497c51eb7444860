"""`kubetier router bench replicas`, run tiny: real engine simulators and routers on loopback.

Checks the JSON's shape and that every request the routers accepted was answered in full
(no wall-clock assertions: attainment is reported, never asserted); plus the pure parts
(variant names, the paired verdict)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kubetier.router import bench_replicas as br


def test_tiny_run_writes_every_figure_and_loses_no_request(tmp_path):
    out = tmp_path / "replicas.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kubetier.cli", "router", "bench", "replicas"]
        + ["--variants", "1w,2r@0.5", "--repeat", "2", "--duration", "1.5", "--rate", "6"]
        + ["--token-ms", "20", "--engines-per-tier", "1", "--output-tokens", "4", "--settle", "0.5"]
        + ["--output", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "per-tier attainment" in proc.stdout
    data = json.loads(out.read_text())
    tiers = [t["name"] for t in data["rig"]["tiers"]]
    assert tiers == ["interactive", "standard", "batch"]
    assert data["rig"]["arrivals"] == sum(data["rig"]["arrivals_per_tier"].values()) > 0
    runs = data["runs"]
    # Two repeats, variants alternated: forward then backward.
    assert [(r["repeat"], r["variant"]) for r in runs] == [(0, "1w"), (0, "2r@0.5"), (1, "2r@0.5"), (1, "1w")]
    for r in runs:
        # The same schedule every run, and every request accounted for.
        assert r["requests"] == data["rig"]["arrivals"]
        assert r["accepted_not_answered"] == 0, r["error_examples"]
        assert r["answered"] + r["rejected_429"] + r["unavailable_503"] == r["requests"]
        assert sum(t["requests"] for t in r["tiers"].values()) == r["requests"]
        for t in r["tiers"].values():
            assert t["met"] <= t["requests"]
            assert t["attainment_percent"] == pytest.approx(100.0 * t["met"] / t["requests"], abs=0.01)
        assert set(r["cpu_percent"]) == {"routers", "engines", "load_generator"}
        assert r["load_average_1m"]["max"] >= r["load_average_1m"]["mean"] >= 0
        # One status per replica, from its own admin port; together they saw every request.
        assert len(r["requests_per_replica"]) == r["processes"] == (2 if r["variant"] == "2r@0.5" else 1)
        assert sum(r["requests_per_replica"]) == r["requests"]
        assert r["scrape_interval_s"] == (0.5 if r["variant"] == "2r@0.5" else 1.0)
    cmp = data["comparison"]
    assert cmp["baseline"] == "1w"
    rep = cmp["variants"]["2r@0.5"]["tiers"]
    for t in tiers:
        assert len(rep[t]["paired_diffs_pp"]) == 2
        assert rep[t]["verdict"] == br.verdict(*rep[t]["diff_95_interval_pp"])
        base = cmp["variants"]["1w"]["tiers"][t]
        assert "verdict" not in base and len(base["values"]) == 2


def test_variant_names():
    assert br.parse_variant("1w", 1.0) == br.VariantSpec("1w", 1, 1, 1.0)
    assert br.parse_variant("2w", 1.0) == br.VariantSpec("2w", 1, 2, 1.0)
    assert br.parse_variant("3r@0.25", 1.0) == br.VariantSpec("3r@0.25", 3, 1, 0.25)
    assert br.parse_variant("3r:f0", 1.0) == br.VariantSpec("3r:f0", 3, 1, 1.0, 0.0)
    assert br.parse_variant("2r@0.5:f0.05", 1.0) == br.VariantSpec("2r@0.5:f0.05", 2, 1, 0.5, 0.05)
    assert br.parse_variant("1w:base", 1.0) == br.VariantSpec("1w:base", 1, 1, 1.0, None, True)
    for bad in ("2x", "r2", "0r", "2r@0", "2r@", "2r:f", "2r:base:f0", "2r:old"):
        with pytest.raises(ValueError):
            br.parse_variant(bad, 1.0)


def test_verdict_needs_the_whole_interval_inside_one_point():
    assert br.verdict(-0.4, 0.9) == "within 1 pp"
    assert br.verdict(-3.0, -1.2) == "loses more than 1 pp"
    assert br.verdict(1.1, 2.0) == "gains more than 1 pp"
    assert br.verdict(-1.5, 0.2).startswith("not resolved")
    assert br.verdict(None, None).startswith("not resolved")


def test_compare_pairs_each_variant_with_the_baseline_of_the_same_repeat():
    def run(variant, rep, pct):
        return {"variant": variant, "repeat": rep, "tiers": {"interactive": {"attainment_percent": pct}}}

    runs = [run("1w", 0, 90.0), run("2r", 0, 88.0), run("2r", 1, 80.0), run("1w", 1, 83.0)]
    cmp = br.compare(runs, "1w", ["interactive"])
    x = cmp["variants"]["2r"]["tiers"]["interactive"]
    assert x["paired_diffs_pp"] == [-2.0, -3.0]
    assert x["diff_mean_pp"] == -2.5
    lo, hi = x["diff_95_interval_pp"]
    assert lo < -2.5 < hi
    assert cmp["variants"]["1w"]["tiers"]["interactive"]["mean"] == 86.5


def test_schedule_is_fixed_by_the_seed():
    tiers = br.tiers_for(100.0, 16, [0.5, 0.3, 0.2])
    a = br.schedule(10.0, 5.0, tiers, seed=3)
    assert a == br.schedule(10.0, 5.0, tiers, seed=3)
    assert a != br.schedule(10.0, 5.0, tiers, seed=4)
    assert all(0 < x.offset_s < 5.0 for x in a)
    assert [t["ttftMs"] for t in tiers] == [500, 1500, 10000]
