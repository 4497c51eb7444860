"""Turn a scenario into simulator runs: one run, a goodput search, the whole comparison."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kubetier.policy.latency import LatencyModel
from kubetier.policy.routing import KINDS, TierSLO

from . import workload as wl
from .bound import TierCapacity, fluid_bound
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


def available_policies(requested: list[str]) -> tuple[list[str], list[str]]:
    ok, missing = [], []
    for p in requested:
        (ok if POLICY_KINDS[p] in KINDS else missing).append(p)
    return ok, missing


def arrivals(sc: Scenario, rate_scale: float, traces_dir: Path | None) -> Iterator[wl.Arrival]:
    """The scenario's requests at ``rate_scale`` times the sources' own rate, by time."""
    streams = []
    for i, src in enumerate(sc.workload.sources):
        # One random stream per source, derived from the seed: tier draws and synthetic
        # arrivals do not depend on the rate scale or on the other sources.
        rng = random.Random(sc.seed * 1_000_003 + i)
        if src.trace is not None:
            rows = wl.read_trace(wl.resolve_trace(src.trace, traces_dir))
        else:
            s = src.synthetic
            pl = wl.LengthDist(s.prompt.dist, s.prompt.mean, s.prompt.sd, s.prompt.min, s.prompt.max)
            ol = wl.LengthDist(s.output.dist, s.output.mean, s.output.sd, s.output.min, s.output.max)
            rows = wl.synthetic(
                s.arrival,
                s.rate,
                pl,
                ol,
                sc.seed * 1_000_003 + i + 1,
                cv=s.cv,
                amplitude=s.amplitude,
                period_s=s.period_s,
            )
            if sc.workload.duration_s is None and sc.workload.max_requests is None:
                raise ValueError(
                    f"workload.sources.{i}: a synthetic source needs workload.durationS or workload.maxRequests"
                )
        if src.tier is not None:
            weights = [(sc.tier_index(src.tier), 1.0)]
        else:
            weights = [(sc.tier_index(name), w) for name, w in src.mix.items()]
        streams.append(wl.tag_and_window(rows, weights, rng, rate_scale, sc.workload.start_s, sc.workload.duration_s))
    return wl.limit(wl.merge(streams), sc.workload.max_requests)


@dataclass
class WorkloadShape:
    requests: int
    duration_s: float
    rate_rps: float  # at rate scale 1
    per_tier: list[dict]


def workload_shape(sc: Scenario, traces_dir: Path | None) -> WorkloadShape:
    n = [0] * len(sc.tiers)
    p = [0] * len(sc.tiers)
    o = [0] * len(sc.tiers)
    last = 0.0
    total = 0
    for a in arrivals(sc, 1.0, traces_dir):
        n[a.tier] += 1
        p[a.tier] += a.prompt_tokens
        o[a.tier] += a.output_tokens
        last = a.t
        total += 1
    dur = sc.workload.duration_s if sc.workload.duration_s and sc.workload.max_requests is None else max(last, 1e-9)
    per = [
        {
            "tier": t.name,
            "requests": n[i],
            "share": n[i] / total if total else 0.0,
            "meanPrompt": p[i] / n[i] if n[i] else 0.0,
            "meanOutput": o[i] / n[i] if n[i] else 0.0,
        }
        for i, t in enumerate(sc.tiers)
    ]
    return WorkloadShape(total, dur, total / dur if dur > 0 else 0.0, per)


def upper_bound(sc: Scenario, model: LatencyModel, shape: WorkloadShape) -> tuple[float, list[TierCapacity]]:
    n = sum(sc.fleet.servers.values()) if sc.fleet.servers is not None else sc.fleet.pool
    rows = [
        (
            t.name,
            shape.per_tier[i]["share"],
            shape.per_tier[i]["meanPrompt"],
            shape.per_tier[i]["meanOutput"],
            t.tpot_ms / 1000.0,
            t.ttft_ms / 1000.0,
        )
        for i, t in enumerate(sc.tiers)
    ]
    return fluid_bound(model, n, rows)


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
    cfg = SimConfig(
        tiers=[TierSLO.from_api(t) for t in sc.tiers],
        server_tiers=server_tiers_for(sc, policy),
        model=model,
        policy_kind=POLICY_KINDS[policy],
        seed=sc.seed,
        model_load_s=sc.fleet.model_load_s,
        track_power=track_power,
        hooks=list(hooks or []),
        rebin_idle=policy == "kubetier" and sc.fleet.pool is not None,
    )
    budget = None
    if tier_requests is not None:
        budget = [int(n * (1.0 - t.attainment_percent / 100.0) + 1e-9) for n, t in zip(tier_requests, sc.tiers)]
    col = Collector(len(sc.tiers), budget)
    sim = Simulator(cfg, sink=col)
    if budget is not None:
        col.on_settled = lambda: setattr(sim, "stop", True)
    t0 = time.perf_counter()
    sim.run(arrivals(sc, rate_scale, traces_dir), progress=progress)
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
