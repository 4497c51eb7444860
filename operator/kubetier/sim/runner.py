"""Turn a scenario into simulator runs: one run, a goodput search, the whole comparison."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kubetier.policy.latency import LatencyModel
from kubetier.policy.routing import KINDS, TierSLO

from . import workload as wl
from .bound import WorkModel, necessary_condition, work_models
from .engine import Hook, SimConfig, Simulator
from .metrics import Collector, TierStats, summarize
from .scenario import Scenario

# Scenario policy name -> RoutingPolicy kind, and how the fleet is labelled for it.
# kubetier and the static partition keep the scenario's per-tier servers; the pooled
# baselines see every server as one bin (they are tier-blind load balancers).
POLICY_KINDS = {
    "kubetier": "slo",
    "round-robin": "pool-round-robin",
    "least-loaded": "pool-least-loaded",
    "static-partition": "static-partition",
    "two-class": "two-class",
}


# kubetier may move idle servers between bins in a per-tier fleet too (the fleet's
# split is then its starting point, as the tier-blind baselines ignore it entirely).
REBIN_PARTITIONS = True


def available_policies(requested: list[str]) -> tuple[list[str], list[str]]:
    ok, missing = [], []
    for p in requested:
        (ok if POLICY_KINDS[p] in KINDS else missing).append(p)
    return ok, missing


_BASE_CACHE: dict[tuple[str, str], tuple] = {}
_BASE_CACHE_MAX = 8


def _source_rows(sc: Scenario, i: int, traces_dir: Path | None):
    src = sc.workload.sources[i]
    return wl.read_trace(wl.resolve_trace(src.trace, traces_dir))


def _synthetic(sc: Scenario, i: int, rate_scale: float, duration: float) -> tuple:
    """A synthetic source resampled at the scaled rate (same process, same CV, same
    diurnal period in seconds) over the window; the seed depends on the scale."""
    s = sc.workload.sources[i].synthetic
    pl = wl.LengthDist(s.prompt.dist, s.prompt.mean, s.prompt.sd, s.prompt.min, s.prompt.max)
    ol = wl.LengthDist(s.output.dist, s.output.mean, s.output.sd, s.output.min, s.output.max)
    seed = sc.seed * 1_000_003 + i + 1 + (0 if rate_scale == 1.0 else int(rate_scale * 1_000_000) * 7919)
    return wl.synthetic_window(
        s.arrival,
        s.rate * rate_scale,
        pl,
        ol,
        seed,
        duration,
        _weights(sc, i),
        cv=s.cv,
        amplitude=s.amplitude,
        period_s=s.period_s,
    )


def _weights(sc: Scenario, i: int) -> list[tuple[int, float]]:
    src = sc.workload.sources[i]
    if src.tier is not None:
        return [(sc.tier_index(src.tier), 1.0)]
    return [(sc.tier_index(name), w) for name, w in (src.mix or {}).items()]


def _base(sc: Scenario, traces_dir: Path | None) -> tuple:
    """Per source, the rows of the window at scale 1 (arrays), and the window length."""
    key = (sc.model_dump_json(), str(traces_dir))
    hit = _BASE_CACHE.get(key)
    if hit is not None:
        return hit
    w = sc.workload
    if w.duration_s is None and w.max_requests is None and any(src.synthetic for src in w.sources):
        i = next(i for i, src in enumerate(w.sources) if src.synthetic)
        raise ValueError(f"workload.sources.{i}: a synthetic source needs workload.durationS or workload.maxRequests")
    duration = w.duration_s
    if duration is None:
        # maxRequests alone: the window is the time the first maxRequests arrivals span;
        # synthetic sources alone would reach it by maxRequests / total rate
        syn_rate = sum(src.synthetic.rate for src in w.sources if src.synthetic)
        guess = (w.max_requests or 1) / syn_rate if syn_rate > 0 else None
    else:
        guess = duration
    per_source = []
    for i, src in enumerate(w.sources):
        if src.trace is not None:
            rng = random.Random(sc.seed * 1_000_003 + i)
            per_source.append(
                wl.window_rows(
                    _source_rows(sc, i, traces_dir), _weights(sc, i), rng, w.start_s, duration, w.max_requests
                )
            )
        else:
            per_source.append(_synthetic(sc, i, 1.0, guess if guess is not None else 3600.0))
    if duration is None:
        t_all = np.sort(np.concatenate([a[0] for a in per_source]))[: w.max_requests]
        duration = float(t_all[-1]) + 1e-6 if len(t_all) else 1.0
        per_source = [tuple(x[a[0] < duration] for x in a) for a in per_source]
    out = (per_source, duration)
    if len(_BASE_CACHE) >= _BASE_CACHE_MAX:
        _BASE_CACHE.clear()
    _BASE_CACHE[key] = out
    return out


def measure_window(sc: Scenario, duration_s: float) -> tuple[float, float]:
    w = sc.workload
    warm = w.warmup_s if w.warmup_s is not None else 0.1 * duration_s
    cool = w.cooldown_s if w.cooldown_s is not None else 0.1 * duration_s
    if warm + cool >= duration_s:
        raise ValueError(
            f"workload: warmupS ({warm:g}) + cooldownS ({cool:g}) leave nothing of the {duration_s:g} s window to measure"
        )
    return warm, duration_s - cool


def build_window(sc: Scenario, rate_scale: float, traces_dir: Path | None) -> wl.Window:
    """The run's arrivals at ``rate_scale`` times the sources' rate, over the scenario's
    measured duration (trace sources: superposed time-shifted copies, see
    :func:`workload.superpose`; synthetic sources: the same process at the scaled rate)."""
    per_source, duration = _base(sc, traces_dir)
    parts = []
    for i, src in enumerate(sc.workload.sources):
        if src.trace is not None:
            t, p, o, k = per_source[i]
            parts.append(wl.superpose(t, p, o, k, duration, rate_scale, sc.seed * 1_000_003 + i))
        elif rate_scale == 1.0:
            parts.append(per_source[i])
        else:
            parts.append(_synthetic(sc, i, rate_scale, duration))
    t = np.concatenate([x[0] for x in parts])
    order = np.argsort(t, kind="stable")
    warm, until = measure_window(sc, duration)
    return wl.Window(
        t[order],
        np.concatenate([x[1] for x in parts])[order],
        np.concatenate([x[2] for x in parts])[order],
        np.concatenate([x[3] for x in parts])[order],
        duration,
        warm,
        until,
    )


def arrivals(sc: Scenario, rate_scale: float, traces_dir: Path | None) -> Iterator[wl.Arrival]:
    """The scenario's requests at ``rate_scale`` times the sources' own rate, by time."""
    return build_window(sc, rate_scale, traces_dir).arrivals()


@dataclass
class WorkloadShape:
    requests: int  # measured requests at rate scale 1
    duration_s: float  # the simulated window (fixed at every rate scale)
    rate_rps: float  # measured requests per measured second at rate scale 1
    per_tier: list[dict]
    measure_from_s: float = 0.0
    measure_until_s: float = 0.0


def workload_shape(sc: Scenario, traces_dir: Path | None) -> WorkloadShape:
    win = build_window(sc, 1.0, traces_dir)
    m = win.measured()
    k = win.tier[m]
    total = int(m.sum())
    per = []
    for i, t in enumerate(sc.tiers):
        sel = k == i
        n = int(sel.sum())
        per.append(
            {
                "tier": t.name,
                "requests": n,
                "share": n / total if total else 0.0,
                "meanPrompt": float(win.prompt[m][sel].mean()) if n else 0.0,
                "meanOutput": float(win.output[m][sel].mean()) if n else 0.0,
            }
        )
    span = win.measure_until_s - win.measure_from_s
    return WorkloadShape(
        total, win.duration_s, total / span if span > 0 else 0.0, per, win.measure_from_s, win.measure_until_s
    )


def load_ratio(
    sc: Scenario,
    model: LatencyModel,
    rate_scale: float,
    traces_dir: Path | None,
    wms: list[WorkModel] | None = None,
    stop_above: float = math.inf,
) -> float:
    """Needed / available server time at this scale (:func:`bound.necessary_condition`):
    no policy can pass where it exceeds 1."""
    win = build_window(sc, rate_scale, traces_dir)
    tiers = [(t.ttft_ms / 1000.0, t.tpot_ms / 1000.0, t.attainment_percent) for t in sc.tiers]
    return necessary_condition(
        win.t,
        win.prompt,
        win.output,
        win.tier,
        win.measure_from_s,
        win.measure_until_s,
        tiers,
        wms or work_models(model),
        n_servers(sc),
        stop_above=stop_above,
    )


def window_arrivals(win: wl.Window, chunk: int = 1 << 16) -> Iterator[tuple[float, int, int, int]]:
    """The window's arrivals as plain ``(t, prompt, output, tier)`` tuples (the field
    order of :class:`workload.Arrival`), converted to Python values a chunk at a time:
    converting all four columns at once (``Window.arrivals``) held ~110 bytes per request
    in lists for the whole run (1.8 GB RSS at 3.2M requests into a 10M-request run).
    Plain tuples, not ``Arrival``: building a named tuple cost ~0.27 µs per request
    (``timeit``: 380 ns per ``Arrival._make`` against 114 ns per ``zip`` tuple)."""
    for i in range(0, len(win.t), chunk):
        j = i + chunk
        yield from zip(win.t[i:j].tolist(), win.prompt[i:j].tolist(), win.output[i:j].tolist(), win.tier[i:j].tolist())


def n_servers(sc: Scenario) -> int:
    return sum(sc.fleet.servers.values()) if sc.fleet.servers is not None else (sc.fleet.pool or 0)


def bound_scale(sc: Scenario, model: LatencyModel, traces_dir: Path | None, iterations: int = 12) -> float:
    """The largest rate scale at which the necessary condition holds (bracket by
    doubling, then log bisection; ``inf`` capped at 4096x)."""
    wms = work_models(model)

    def ok(s: float) -> bool:
        return load_ratio(sc, model, s, traces_dir, wms, stop_above=1.0) <= 1.0

    lo, hi = 1.0, 1.0
    if ok(1.0):
        while ok(hi * 2.0):
            hi *= 2.0
            if hi >= 4096:
                return hi
        lo, hi = hi, hi * 2.0
    else:
        while not ok(lo / 2.0):
            lo /= 2.0
            if lo < 1e-4:
                return 0.0
        lo, hi = lo / 2.0, lo
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class RunResult:
    policy: str
    rate_scale: float
    rate_rps: float
    requests: int
    tiers: list[TierStats]
    gpu_seconds: float
    makespan_s: float
    wall_s: float
    steps: int
    waits: int
    server_served: list[int] = field(default_factory=list)
    server_busy: list[float] = field(default_factory=list)
    server_tier: list[str] = field(default_factory=list)
    energy_j: float = 0.0
    aborted: bool = False  # stopped early: a tier was already past its miss budget
    duration_s: float = 0.0  # arrivals span this much simulated time (fixed at every scale)
    measured_requests: int = 0  # arrivals inside the measurement window (the figures' population)

    @property
    def meets_targets(self) -> bool:
        return not self.aborted and all(t.meets_target for t in self.tiers)

    def to_json(self) -> dict:
        d = asdict(self)
        d["meetsTargets"] = self.meets_targets
        return d


def _current_tier(sim: Simulator, srv) -> str:
    load = sim.policy.server(srv.sid)
    return load.tier if load is not None else srv.tier


def server_tiers_for(sc: Scenario, policy: str) -> list[str]:
    return sc.server_tiers()


def run_once(
    sc: Scenario,
    policy: str,
    rate_scale: float,
    model: LatencyModel,
    traces_dir: Path | None,
    hooks: list[Hook] | None = None,
    progress: Callable[[int], None] | None = None,
    track_power: bool = False,
    tier_requests: list[int] | None = None,
) -> RunResult:
    """One simulation. With ``tier_requests`` (requests per tier of the whole run) the run
    stops as soon as some tier has missed more than its target allows (``aborted``):
    the goodput search only needs the verdict, and overloaded runs are the slow ones."""
    win = build_window(sc, rate_scale, traces_dir)
    cfg = SimConfig(
        tiers=[TierSLO.from_api(t) for t in sc.tiers],
        server_tiers=server_tiers_for(sc, policy),
        model=model,
        policy_kind=POLICY_KINDS[policy],
        seed=sc.seed,
        model_load_s=sc.fleet.model_load_s,
        track_power=track_power,
        hooks=list(hooks or []),
        rebin_idle=policy == "kubetier" and (sc.fleet.pool is not None or REBIN_PARTITIONS),
        measure_from_s=win.measure_from_s,
        measure_until_s=win.measure_until_s,
    )
    measured = win.tier_counts(len(sc.tiers))
    budget = None
    if tier_requests is not None:
        # the miss budget of the requests measured at this scale (the count grows with it)
        budget = [int(n * (1.0 - t.attainment_percent / 100.0) + 1e-9) for n, t in zip(measured, sc.tiers)]
    col = Collector(len(sc.tiers), budget)
    sim = Simulator(cfg, sink=col)
    if budget is not None:
        col.on_settled = lambda: setattr(sim, "stop", True)
    t0 = time.perf_counter()
    sim.run(window_arrivals(win), progress=progress)
    wall = time.perf_counter() - t0
    stats = summarize(
        col,
        [t.name for t in sc.tiers],
        [t.ttft_ms for t in sc.tiers],
        [t.tpot_ms for t in sc.tiers],
        [t.attainment_percent for t in sc.tiers],
    )
    makespan = sim.now
    return RunResult(
        policy=policy,
        rate_scale=rate_scale,
        rate_rps=0.0,
        requests=sim.n_arrived,
        tiers=stats,
        gpu_seconds=sim.gpu_seconds(),
        makespan_s=makespan,
        wall_s=wall,
        steps=sim.steps,
        waits=sim.n_waits,
        server_served=[s.served for s in sim.servers],
        server_busy=[s.busy_s / makespan if makespan > 0 else 0.0 for s in sim.servers],
        server_tier=[_current_tier(sim, s) for s in sim.servers],
        energy_j=sum(s.energy_j for s in sim.servers),
        aborted=col.settled,
        duration_s=win.duration_s,
        measured_requests=sum(measured),
    )


@dataclass
class GoodputResult:
    policy: str
    goodput_rps: float
    goodput_scale: float
    runs: list[RunResult]  # every run of the search, by rate scale


def search_goodput(
    sc: Scenario,
    policy: str,
    model: LatencyModel,
    base_rps: float,
    traces_dir: Path | None,
    start_scale: float,
    tier_requests: list[int],
    on_run: Callable[[RunResult], None] | None = None,
) -> GoodputResult:
    """Largest rate scale at which every tier meets its attainment target.

    Bracket by doubling/halving from ``start_scale`` within [minScale, maxScale], then
    bisect in log space for ``goodput.iterations`` steps. Attainment is not strictly
    monotone in the rate (bursts align differently), so the answer is the largest
    scale observed to pass below the smallest observed to fail.
    """
    g = sc.goodput
    cache: dict[float, RunResult] = {}

    def ok(scale: float) -> bool:
        scale = round(scale, 6)
        if scale not in cache:
            r = run_once(sc, policy, scale, model, traces_dir, tier_requests=tier_requests)
            r.rate_rps = scale * base_rps
            cache[scale] = r
            if on_run is not None:
                on_run(r)
        return cache[scale].meets_targets

    s = min(max(start_scale, g.min_scale), g.max_scale)
    if ok(s):
        lo, hi = s, None
        while hi is None:
            nxt = lo * 2.0
            if nxt > g.max_scale:
                if lo < g.max_scale and not ok(g.max_scale):
                    hi = g.max_scale
                    break
                lo = g.max_scale
                break
            if ok(nxt):
                lo = nxt
            else:
                hi = nxt
    else:
        hi, lo = s, None
        while lo is None:
            nxt = hi / 2.0
            if nxt < g.min_scale:
                break
            if ok(nxt):
                lo = nxt
            else:
                hi = nxt
    if lo is not None and hi is not None:
        for _ in range(g.iterations):
            mid = math.sqrt(lo * hi)
            if ok(mid):
                lo = mid
            else:
                hi = mid
    runs = [cache[k] for k in sorted(cache)]
    scale = round(lo, 6) if lo else 0.0
    return GoodputResult(policy, scale * base_rps, scale, runs)
