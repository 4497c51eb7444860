"""The fidelity benchmark end to end, small: `kubetier engine-sim` as a real child
process on loopback, driven by the benchmark's streaming clients; the client-side
TTFT/TPOT must be within tolerance of the latency model's prediction.

Time scale 0.5 (the simulator runs at half speed): on this machine's two cores, shared
with other suites (load average 8-9 while this was written), a process can wait a few
milliseconds for a core, and at time scale 2 the simulator fell 24% behind its own
schedule. Slowing time makes that jitter a smaller share of each iteration; the
tolerances (wider than the benchmark's 10% target) plus a fixed slack for the HTTP
round trip keep the test about the simulator, not the neighbours. The exact agreement
of prediction and scheduler is pinned without a clock in test_fidelity_prediction.py;
this test catches a broken HTTP path or timing loop (a profile ignored, a lost
iteration, a stream that stalls), which all miss by far more."""

from __future__ import annotations

import json
import math

import pytest

from kubetier.engine_sim import fidelity
from kubetier.policy.latency import load_profile

pytestmark = pytest.mark.slow

PROFILE = "llama-3.1-8b-h100"
TIME_SCALE = 0.5
HTTP_SLACK_MS = 3.0  # wake-ups and socket hops, client plus server, in model ms at this scale


def _within(measured_ms: float, predicted_ms: float, rel: float, slack_ms: float = 0.0) -> bool:
    return abs(measured_ms - predicted_ms) <= rel * predicted_ms + slack_ms


def _tpot_ok(p) -> bool:
    return _within(p.measured_tpot_ms, p.predicted["tpot_s"], 0.15)


def _ttft_ok(p) -> bool:
    return _within(p.measured_ttft_ms, p.predicted["ttft_s"], 0.25, HTTP_SLACK_MS) and _within(
        p.server_ttft_ms, p.predicted["ttft_s"], 0.25, HTTP_SLACK_MS / 2
    )


@pytest.fixture(scope="module")
def sweep():
    """The sweep, measured up to three times: a neighbour that takes both cores for a
    moment stalls the simulator's clock (seen: +21% TPOT in one of five runs), so a
    point outside tolerance is measured again; three misses in a row fail the tests."""
    model = load_profile(PROFILE)
    points = []
    with fidelity.SimulatorProcess(PROFILE, time_scale=TIME_SCALE) as sim:
        for c in (1, 8, 32):
            for _ in range(3):
                (p,) = fidelity._uvloop_run(
                    fidelity.run_sweep(
                        sim.host,
                        sim.port,
                        model,
                        [c],
                        256,
                        32,
                        time_scale=TIME_SCALE,
                        server_pid=sim.pid,
                        measure_cycles=3,
                        min_requests=8,
                    )
                )
                if p.errors == 0 and _tpot_ok(p) and _ttft_ok(p):
                    break
            points.append(p)
    return points


def test_every_request_succeeds_with_the_requested_length(sweep):
    for p in sweep:
        assert p.errors == 0, p
        assert p.requests >= 5, p
        assert not p.notes, p.notes
        assert p.concurrent_streams_peak == p.concurrency


def test_tpot_is_within_tolerance_of_the_model(sweep):
    for p in sweep:
        assert _tpot_ok(p), (p.concurrency, p.measured_tpot_ms, p.predicted)


def test_ttft_is_within_tolerance_of_the_model(sweep):
    for p in sweep:
        # Client side, and the simulator's own histogram (no HTTP in it).
        assert _ttft_ok(p), (p.concurrency, p.measured_ttft_ms, p.server_ttft_ms, p.predicted)


def test_median_absolute_error(sweep):
    mae = fidelity.median_abs_error_pct(sweep)
    assert mae["all"] < 20, mae
    assert all(math.isfinite(v) for v in mae.values())


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "fidelity.json"
    rc = fidelity.main(
        [
            "--concurrency",
            "4",
            "--prompt-tokens",
            "128",
            "--output-tokens",
            "16",
            "--time-scale",
            "4",
            "--measure-cycles",
            "2",
            "--sustain",
            "0",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "median absolute error" in text
    data = json.loads(out.read_text())
    assert data["profile"] == PROFILE
    assert [p["concurrency"] for p in data["points"]] == [4]
    assert data["points"][0]["requests"] > 0


def test_cli_refuses_bad_arguments(capsys):
    assert fidelity.main(["--concurrency", "0,4"]) == 2
    assert "--concurrency" in capsys.readouterr().err
    assert fidelity.main(["--profile", "no-such-profile"]) == 2
    assert "no such built-in profile" in capsys.readouterr().err
