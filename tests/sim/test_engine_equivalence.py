"""Dropping superseded step-end entries from the event heap (the simulator's speed work)
changes no result: every run here goes through the engine twice, once as it runs and once
with the drop switched off (every superseded entry stays in the heap and is popped and
skipped, as the engine did before; the speed work itself was checked against a frozen
copy of that engine, main at af1b284, before the copy was removed), and every per-request outcome (first-token time, mean TPOT, queueing time, deadline verdict,
rejection, spill, server: as the full-precision floats the sink receives), every server's
counters and the run's totals must be equal, not close.

The scenarios cover what the engine does: chunked prefill, decode stretches cut by
arrivals, per-token deadlines, waiting and rejection under overload, spill, rebinned
pools, cold starts, drains, spot removals with and without migration, power slowdowns and
model swaps mid-stretch, learned latency corrections and power accounting.
"""

from __future__ import annotations

import hashlib
import math

import pytest

from kubetier.policy.latency import load_profile
from kubetier.policy.routing import TierSLO
from kubetier.sim import bench, engine, native, runner
from kubetier.sim.workload import Arrival

# The switch below is a module constant of the engine; a compiled engine has it folded in.
pytestmark = pytest.mark.skipif(native.active_build() is not None, reason="this process runs the compiled simulator")


class RecordingSink:
    """Every outcome exactly as the engine reports it (no float32 columns)."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def record(self, *row: object) -> None:
        self.rows.append(row)


class FleetChanges:
    """A hook that uses every fleet-control method of the simulator at fixed times."""

    interval_s = 0.7

    def __init__(self, other_model) -> None:
        self.other_model = other_model
        self.ticks = 0

    def schedule(self):
        def drain_then_remove(sim, now):
            sim.drain_server(sim.servers[0])
            sim.call_at(now + 1.5, lambda s, t: s.remove_server(s.servers[0], migrate=True))

        def break_streams(sim, now):
            sim.remove_server(sim.servers[1], migrate=False)

        def cold_start(sim, now):
            sim.add_server("interactive")  # model-load delay from the config

        def power(sim, now):
            sim.set_slowdown(sim.servers[2], 1.3)
            sim.set_model(sim.servers[3], self.other_model)  # cuts a decode stretch in flight

        return [(2.0, drain_then_remove), (3.1, break_streams), (1.0, cold_start), (2.5, power)]

    def on_tick(self, sim, now):
        self.ticks += 1
        if self.ticks == 6:
            sim.add_server("batch", ready_after_s=0.0)


def _bench_arrivals(servers: int, requests: int, load: float) -> tuple[list[TierSLO], list[str], object, list]:
    sc, model, _rate, _bound = bench.bench_scenario(servers, requests, load, "llama-3.1-8b-h100")
    win = runner.build_window(sc, 1.0, None)
    return [TierSLO.from_api(t) for t in sc.tiers], sc.server_tiers(), model, list(win.arrivals())


def _simulate(cfg_kwargs: dict, arrivals: list, hooks: list, compact: bool, sink=None) -> engine.Simulator:
    """One run; ``compact`` False: superseded step-end entries are never dropped."""
    saved = engine._STALE_COMPACT_MIN
    engine._STALE_COMPACT_MIN = saved if compact else 1 << 62
    try:
        sim = engine.Simulator(engine.SimConfig(**cfg_kwargs, hooks=hooks), sink=sink or RecordingSink())
        sim.run(iter(arrivals))
    finally:
        engine._STALE_COMPACT_MIN = saved
    if not compact:
        assert sim.heap_compactions == 0
    return sim


def _run(cfg_kwargs: dict, arrivals: list, hook_factory=None, compact: bool = True) -> dict:
    hooks = [hook_factory()] if hook_factory is not None else []
    sink = RecordingSink()
    sim = _simulate(cfg_kwargs, arrivals, hooks, compact, sink)
    servers = [
        (s.sid, s.served, s.busy_s, s.energy_j, s.tokens_out, s.spilled_in, s.G, s.kv, s.removed, s.ended_at)
        for s in sim.servers
    ]
    return {
        "rows": sink.rows,
        "servers": servers,
        "totals": (
            sim.steps,
            sim.n_arrived,
            sim.n_done,
            sim.n_rejected,
            sim.n_waits,
            sim.n_broken,
            sim.now,
            sim.gpu_seconds(),
        ),
    }


def _digest(result: dict) -> str:
    return hashlib.sha256(repr(result).encode()).hexdigest()


CASES = {
    # (servers, requests, load as a fraction of the fluid estimate, policy kind, rebin)
    "kubetier-64": (64, 4000, 0.6, "slo", True),
    "least-loaded-64": (64, 4000, 0.6, "pool-least-loaded", False),
    "round-robin-16-overloaded": (16, 3000, 1.4, "pool-round-robin", False),
    "kubetier-16-overloaded": (16, 3000, 1.6, "slo", True),
    "static-partition-16": (16, 2000, 0.9, "static-partition", False),
    "two-class-16": (16, 2000, 0.9, "two-class", False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_outcomes_with_and_without_dropping_superseded_steps(case: str) -> None:
    servers, requests, load, kind, rebin = CASES[case]
    tiers, server_tiers, model, arrivals = _bench_arrivals(servers, requests, load)
    cfg = dict(
        tiers=tiers,
        server_tiers=server_tiers,
        model=model,
        policy_kind=kind,
        seed=5,
        rebin_idle=rebin,
        model_load_s=2.0,
    )
    new = _run(cfg, arrivals)
    ref = _run(cfg, arrivals, compact=False)
    assert len(new["rows"]) == len(ref["rows"]) > 0
    for i, (a, b) in enumerate(zip(new["rows"], ref["rows"])):
        assert a == b, f"request outcome {i} differs: {a} != {b}"
    assert new["servers"] == ref["servers"]
    assert new["totals"] == ref["totals"]
    assert _digest(new) == _digest(ref)


@pytest.mark.parametrize("kind", ["slo", "pool-least-loaded"])
def test_same_outcomes_with_fleet_changes_learning_and_power(kind: str) -> None:
    # cold starts, drain + migrating removal, a removal that breaks streams, a slowdown and
    # a model swap mid-stretch, a server added from a tick; latency learning (which draws
    # from the simulator's RNG every step) and energy accounting on
    tiers, server_tiers, model, arrivals = _bench_arrivals(8, 1500, 0.9)
    other = load_profile("llama-3.1-8b-a100")
    cfg = dict(
        tiers=tiers,
        server_tiers=server_tiers,
        model=model,
        policy_kind=kind,
        seed=7,
        rebin_idle=kind == "slo",
        model_load_s=1.0,
        track_power=True,
        learn_latency=True,
        measure_from_s=0.5,
        measure_until_s=arrivals[-1].t * 0.9,
    )
    new = _run(cfg, arrivals, lambda: FleetChanges(other))
    ref = _run(cfg, arrivals, lambda: FleetChanges(other), compact=False)
    assert new["totals"][5] > 0, "the scenario must break some streams (removal without migration)"
    assert any(s[8] for s in new["servers"]), "the scenario must remove servers"
    assert len(new["servers"]) == 10, "two servers added (a cold start and one from a tick)"
    assert len(new["rows"]) == len(ref["rows"]) > 0
    for i, (a, b) in enumerate(zip(new["rows"], ref["rows"])):
        assert a == b, f"request outcome {i} differs: {a} != {b}"
    assert new["servers"] == ref["servers"]
    assert new["totals"] == ref["totals"]


def test_superseded_steps_are_dropped_without_moving_the_end_of_the_run() -> None:
    # Many cut stretches (least-loaded spreads every arrival onto a decoding server): the
    # heap is compacted several times, and the run still ends where it ends without that.
    tiers, server_tiers, model, arrivals = _bench_arrivals(64, 3000, 0.6)
    cfg = dict(tiers=tiers, server_tiers=server_tiers, model=model, policy_kind="pool-least-loaded", seed=5)
    sim = _simulate(cfg, arrivals, [], compact=True)
    assert sim.heap_compactions >= 3
    ref = _simulate(cfg, arrivals, [], compact=False)
    assert sim.now == ref.now and math.isfinite(sim.now)
    assert sim.gpu_seconds() == ref.gpu_seconds()


def test_the_equivalence_check_can_fail() -> None:
    # The comparison sees a one-ulp change in one server's iteration time.
    tiers, server_tiers, model, arrivals = _bench_arrivals(8, 400, 0.6)
    cfg = dict(tiers=tiers, server_tiers=server_tiers, model=model, policy_kind="pool-least-loaded", seed=5)

    class Nudged:
        interval_s = 0.0

        def schedule(self):
            return [(0.5, lambda sim, now: sim.set_slowdown(sim.servers[0], math.nextafter(1.0, 2.0)))]

        def on_tick(self, sim, now):
            pass

    new = _run(cfg, arrivals, Nudged)
    ref = _run(cfg, arrivals, compact=False)
    assert new["rows"] != ref["rows"] or new["servers"] != ref["servers"]


def test_runner_feeds_the_window_as_plain_rows() -> None:
    *_, arrivals = _bench_arrivals(8, 300, 0.6)
    sc, *_ = bench.bench_scenario(8, 300, 0.6, "llama-3.1-8b-h100")
    rows = list(runner.window_arrivals(runner.build_window(sc, 1.0, None), chunk=64))
    assert rows == [tuple(a) for a in arrivals]
    assert all(type(r) is tuple for r in rows)
    assert isinstance(arrivals[0], Arrival)


def test_dropped_superseded_step_still_ends_the_run_where_the_reference_does() -> None:
    # A model swap to a faster model cuts a long decode stretch: its old end (at the slow
    # model's pace) lies after the request's real finish, so without the drop that
    # superseded entry is the last event popped and sets the run's end (``now``, which
    # gpu_seconds and the busy fractions divide by). Dropping it must not move the end.
    slow, fast = load_profile("llama-3.1-8b-a100"), load_profile("llama-3.1-8b-h100")
    tiers = [TierSLO("only", ttft_ms=5000, tpot_ms=200, priority=1, mean_output_tokens=2000)]

    class SwapThenCompact:
        interval_s = 0.0

        def __init__(self, compact: bool) -> None:
            self.compact = compact

        def schedule(self):
            def swap(sim, now):
                sim.set_model(sim.servers[0], fast)

            def compact(sim, now):
                if self.compact:
                    sim._drop_stale()

            return [(1.0, swap), (1.2, compact)]

        def on_tick(self, sim, now):
            pass

    results = {}
    for name, compact in (("new", True), ("reference", False)):
        cfg = dict(tiers=tiers, server_tiers=["only"], model=slow, policy_kind="static-partition")
        sink = RecordingSink()
        sim = _simulate(cfg, [Arrival(0.0, 100, 2000, 0)], [SwapThenCompact(compact)], compact, sink)
        (row,) = sink.rows
        finished_at = row[1] - slow.request_overhead_s + row[2] * 1999  # first token + 1999 more
        results[name] = (sim.now, sim.gpu_seconds(), sim.servers[0].busy_s, finished_at)
    assert results["reference"][0] > results["reference"][3] + 1e-3, "the superseded entry must end the run"
    assert results["new"] == results["reference"]
