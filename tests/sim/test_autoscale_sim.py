"""The autoscaler in the fleet simulator: small runs whose properties can be checked."""

from __future__ import annotations

import json
import math
import random

import pytest

from kubetier.sim.autoscale import (
    LOAD_PRESETS,
    LoadTime,
    compare,
    default_tiers,
    make_workload,
    parse_load_time,
    table,
)
from kubetier.sim.autoscale_cli import main as cli_main


def test_load_presets_are_fitted_to_the_published_range() -> None:
    p = LOAD_PRESETS["8b"]
    assert p.kind == "lognormal"
    assert p.median_s == pytest.approx(math.sqrt(14.2 * 48.0))
    rng = random.Random(3)
    draws = sorted(p.sample(rng) for _ in range(4000))
    # one sigma either side of the median: about 68% between 14.2 and 48 s
    inside = sum(14.2 <= d <= 48.0 for d in draws) / len(draws)
    assert 0.62 < inside < 0.74
    assert parse_load_time("12.5") == LoadTime("fixed", 12.5, 0.0, "fixed 12.5 s")
    with pytest.raises(ValueError, match=r"preset|seconds"):
        parse_load_time("fast")
    with pytest.raises(ValueError):
        parse_load_time("-1")


def test_batch_jobs_leave_idle_gaps_longer_than_ten_minutes() -> None:
    arr = [a for a in make_workload("diurnal", default_tiers(), 3600.0, 1, None, 2.0) if a.tier == 1]
    gaps = [b.t - a.t for a, b in zip(arr, arr[1:])]
    assert max(gaps) > 600  # what makes a fixed 10-minute keep-alive cold-start every job
    assert all(x.t < 3600.0 for x in arr)


@pytest.fixture(scope="module")
def small() -> object:
    return compare(
        "diurnal",
        3600.0,
        LoadTime("fixed", 30.0, 0.0, "fixed 30 s"),
        LoadTime("fixed", 3.0, 0.0, "fixed 3 s"),
        ["kubetier", "keepalive-10m", "knative", "static-peak"],
        rate=3.0,
    )


def test_static_peak_costs_its_fleet_times_the_run(small) -> None:  # type: ignore[no-untyped-def]
    s = small.results["static-peak"]
    k = small.results["kubetier"]
    assert s.peak_serving == [max(1, x) for x in k.peak_serving]
    assert s.gpu_hours >= sum(s.peak_serving) * 1.0 - 1e-6  # the whole hour (or longer to drain)
    assert s.cold_start_requests == 0 and s.starts == 0


def test_autoscaler_uses_fewer_gpu_hours_than_the_static_peak(small) -> None:  # type: ignore[no-untyped-def]
    k, s = small.results["kubetier"], small.results["static-peak"]
    assert k.gpu_hours < s.gpu_hours
    assert k.idle_gpu_s < s.idle_gpu_s
    assert all(t.requests > 0 for t in k.tiers)


def test_scale_to_zero_tier_cold_starts_when_jobs_outlive_the_keep_alive(small) -> None:  # type: ignore[no-untyped-def]
    f = small.results["keepalive-10m"]
    # batch jobs every ~15 min > 10 min keep-alive: the batch tier went to zero and came back
    assert f.cold_start_events >= 2 and f.cold_start_requests > 0
    assert small.results["knative"].cold_start_events >= f.cold_start_events


def test_table_and_json(small) -> None:  # type: ignore[no-untyped-def]
    text = table(small)
    assert "GPU-h" in text and "static-peak" in text and "goals:" in text
    doc = small.to_json()
    json.dumps(doc)
    assert set(doc["policies"]) == {"kubetier", "keepalive-10m", "knative", "static-peak"}
    assert "gpuHoursSavingVsStaticPeak" in doc["goals"]


def test_cli_errors_and_output(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli_main(["--policies", "nope"]) == 2
    assert "unknown" in capsys.readouterr().err
    assert cli_main(["--model-load", "slow"]) == 2
    rc = cli_main(
        [
            "--hours",
            "0.25",
            "--rate",
            "1",
            "--policies",
            "kubetier,knative",
            "--output",
            str(tmp_path),
            "--model-load",
            "20",
        ]
    )
    assert rc == 0
    doc = json.loads((tmp_path / "autoscale_diurnal.json").read_text())
    assert doc["modelLoad"]["medianS"] == 20.0
    assert (tmp_path / "replicas_diurnal_kubetier.png").stat().st_size > 1000
