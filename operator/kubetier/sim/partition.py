"""The achievable reference: the best static partition, found by search.

A static partition gives tier k its own ``n_k`` servers (least-loaded within the tier,
no spill, the ``static-partition`` routing kind), so the tiers do not interact and a
partition passes at a rate scale exactly when every tier passes alone on its servers.
For a scale s, ``n_k(s)`` = the fewest servers on which tier k alone passes (binary
search; more servers never hurt a tier alone); s is reachable by some partition of N
servers iff ``sum_k n_k(s) <= N``. The search bisects s in log space between a passing
and a failing scale. Unlike the bound, this is a real policy's result (its runs are
ordinary simulator runs), so "x% above the best partition" compares kubetier with
something that could actually be deployed, chosen with hindsight of the whole workload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from kubetier.policy.latency import LatencyModel
from kubetier.policy.routing import TierSLO

from .engine import SimConfig, Simulator
from .metrics import Collector
from .runner import build_window, n_servers
from .scenario import Scenario


@dataclass
class PartitionResult:
    scale: float  # highest passing rate scale found (0 if none)
    servers: dict[str, int] = field(default_factory=dict)  # the partition at that scale
    runs: int = 0


def tier_alone_passes(
    sc: Scenario, model: LatencyModel, tier: int, servers: int, scale: float, traces_dir: Path | None
) -> bool:
    win = build_window(sc, scale, traces_dir)
    sel = win.tier == tier
    m = sel & win.measured()
    n = int(m.sum())
    if n == 0:
        return True
    if servers <= 0:
        return False
    t = sc.tiers[tier]
    budget = [0] * len(sc.tiers)
    budget[tier] = int(n * (1.0 - t.attainment_percent / 100.0) + 1e-9)
    cfg = SimConfig(
        tiers=[TierSLO.from_api(x) for x in sc.tiers],
        server_tiers=[t.name] * servers,
        model=model,
        policy_kind="static-partition",
        seed=sc.seed,
        model_load_s=sc.fleet.model_load_s,
        measure_from_s=win.measure_from_s,
        measure_until_s=win.measure_until_s,
    )
    col = Collector(len(sc.tiers), budget)
    sim = Simulator(cfg, sink=col)
    col.on_settled = lambda: setattr(sim, "stop", True)
    arr = (a for a in win.arrivals() if a.tier == tier)
    sim.run(arr)
    return not col.settled and col.misses[tier] <= budget[tier]


def best_partition(
    sc: Scenario,
    model: LatencyModel,
    traces_dir: Path | None,
    hi_scale: float,
    lo_scale: float = 0.05,
    iterations: int = 6,
    ceiling: float = math.inf,
) -> PartitionResult:
    """Highest scale some static partition passes at: bracketed from [lo_scale, hi_scale]
    (the top raised by doubling while it passes, up to ``ceiling``), then bisected.
    0 when no partition passes even at ``lo_scale``.

    What keeps it affordable (each check is a simulator run of one tier alone):

    * every (tier, servers, scale) verdict is cached, and verdicts are reused by
      monotonicity: a tier that passes on n servers at scale s is taken to pass on more
      servers and at lower scales (the workloads at a lower scale are a subset, see
      ``workload.superpose``), one that fails, to fail on fewer servers and at higher
      scales; runs are only made where neither is known;
    * ``n_k(s)`` is searched between the counts found at the nearest lower scale (a
      floor) and at the nearest higher scale (a cap), not over 1..N;
    * a scale is given up as soon as the counts found so far plus the floors of the
      tiers not yet searched exceed N.

    The monotonicity is the simulator's usual behaviour, not a theorem (attainment is not
    strictly monotone in the rate), so the result is what the search found, and every
    partition it reports passed in a real run at its scale."""
    N = n_servers(sc)
    k_tiers = len(sc.tiers)
    runs = 0
    passed: dict[int, list[tuple[int, float]]] = {k: [] for k in range(k_tiers)}
    failed: dict[int, list[tuple[int, float]]] = {k: [] for k in range(k_tiers)}
    counts_at: dict[float, list[int]] = {}  # n_k(s) of every tier, at scales fully searched

    def passes(k: int, n: int, s: float) -> bool:
        nonlocal runs
        if any(n >= n2 and s <= s2 * (1 + 1e-9) for n2, s2 in passed[k]):
            return True
        if any(n <= n2 and s >= s2 * (1 - 1e-9) for n2, s2 in failed[k]):
            return False
        runs += 1
        ok = tier_alone_passes(sc, model, k, n, s, traces_dir)
        (passed if ok else failed)[k].append((n, s))
        return ok

    def bounds(k: int, s: float) -> tuple[int, int]:
        lower = [c[k] for s2, c in counts_at.items() if s2 <= s]
        upper = [c[k] for s2, c in counts_at.items() if s2 >= s]
        return (max(lower) if lower else 0), (min(upper) if upper else N)

    def need(k: int, s: float, lo: int, hi: int) -> int:
        if not passes(k, hi, s):
            return N + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if passes(k, mid, s):
                hi = mid
            else:
                lo = mid + 1
        return hi

    def feasible(s: float) -> list[int] | None:
        floors = [bounds(k, s)[0] for k in range(k_tiers)]
        counts: list[int] = []
        for k in range(k_tiers):
            lo, hi = bounds(k, s)
            counts.append(need(k, s, lo, max(0, min(hi, N - sum(counts) - sum(floors[k + 1 :])))))
            if sum(counts) + sum(floors[k + 1 :]) > N:
                return None
        counts_at[s] = counts
        return counts

    best = feasible(lo_scale)
    for _ in range(2):  # a bracket's floor that fails (runs are not strictly monotone): lower it
        if best is not None:
            break
        hi_scale, lo_scale = lo_scale, lo_scale / 2.0
        best = feasible(lo_scale)
    if best is None:
        return PartitionResult(0.0, {}, runs)
    lo, hi = lo_scale, max(hi_scale, lo_scale)
    top = feasible(hi)
    while top is not None:
        # the bracket's top passes: raise it (never past ``ceiling``, the provable bound)
        lo, best = hi, top
        if hi >= ceiling:
            return PartitionResult(hi, _named(sc, top, N), runs)
        hi = min(hi * 2.0, ceiling)
        top = feasible(hi)
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        c = feasible(mid)
        if c is not None:
            lo, best = mid, c
        else:
            hi = mid
    return PartitionResult(lo, _named(sc, best, N), runs)


def _named(sc: Scenario, counts: list[int], total: int) -> dict[str, int]:
    out = {t.name: n for t, n in zip(sc.tiers, counts)}
    spare = total - sum(counts)
    if spare > 0 and sc.tiers:  # leftover servers go to the tier that needed most
        k = max(range(len(counts)), key=lambda i: counts[i])
        out[sc.tiers[k].name] += spare
    return out
