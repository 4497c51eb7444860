"""The per-run figures ``bench compare`` derives from the router's status and from
Prometheus histograms (pure functions: no processes)."""

from __future__ import annotations

from kubetier.router.bench_compare import _ttft_in_run, router_view


def _status(outcomes: dict, queued: int, waited: float, scale: float, servers: list) -> dict:
    return {
        "latencyScale": scale,
        "decisions": {"interactive": {"outcomes": outcomes, "queued": queued, "queueWaitSeconds": waited}},
        "servers": servers,
    }


def test_router_view_counts_this_runs_decisions_and_drift_once_per_scrape():
    before = _status({"route/own-bin": 10}, 1, 0.5, 1.0, [])
    srv = {"id": "a", "running": 30, "engineRunning": 20, "routerRunningAtScrape": 25}
    samples = [
        {"t": 0.5, **_status({}, 0, 0.0, 1.5, [srv])},
        {"t": 1.0, **_status({}, 0, 0.0, 2.0, [dict(srv, running=40)])},  # same scrape: drift counted once
        {"t": 1.5, **_status({}, 0, 0.0, 1.25, [dict(srv, engineRunning=30, routerRunningAtScrape=20)])},
    ]
    after = _status({"route/own-bin": 50, "reject/ttft-unreachable": 7, "wait/no-feasible-server": 9}, 8, 2.6, 1.25, [])
    v = router_view(before, samples, after)
    assert v is not None
    assert v["decisions"]["interactive"] == {
        "route/own-bin": 40,
        "reject/ttft-unreachable": 7,
        "wait/no-feasible-server": 9,
    }
    assert v["queue"]["interactive"] == {"queued": 7, "mean_wait_s": 0.3}
    assert v["latency_scale"]["start"] == 1.0 and v["latency_scale"]["max"] == 2.0
    assert v["latency_scale"]["end"] == 1.25
    assert v["running_router_minus_engine"]["a"] == {"mean": -2.5, "min": -10, "max": 5, "n": 2}
    assert v["running_router_mean"]["a"] == round((30 + 40 + 30) / 3, 1)
    # an older router without these fields: nothing to say
    assert router_view(None, [], {"servers": []}) is None


def test_ttft_in_run_takes_the_difference_of_two_scrapes():
    name = "vllm:time_to_first_token_seconds"

    def text(b01: int, b1: int, inf: int, total: float) -> bytes:
        return (
            f'{name}_bucket{{le="0.1"}} {b01}\n{name}_bucket{{le="1.0"}} {b1}\n'
            f'{name}_bucket{{le="+Inf"}} {inf}\n{name}_sum{{}} {total}\n{name}_count{{}} {inf}\n'
        ).encode()

    before = [text(5, 5, 5, 0.25)]
    # this run: 10 first tokens, 4 within 0.1 s, 6 within 1 s, sum 3.0 s
    after = [text(9, 15, 15, 3.25)]
    got = _ttft_in_run(before, after, name)
    assert got is not None
    assert got["n"] == 10 and got["mean_ms"] == 300.0
    # p50: the 5th of 10 lies in (0.1, 1.0], one of 6 into it: 0.1 + 0.9 / 6
    assert got["p50_ms"] == round((0.1 + 0.9 * 1 / 6) * 1000, 1)
    assert _ttft_in_run(after, after, name) is None  # nothing happened in between
