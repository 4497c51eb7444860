"""Upper bounds on a scenario's goodput, and the achievable reference next to them.

**The provable bound** (:func:`necessary_condition`, :func:`bound_scale`). A run passes
when, in every tier k, at least ``need_k`` of its measured requests (arrivals in the
measurement window) get every token by its deadline (token j due at ``arrival + TTFT +
(j-1)*TPOT``). For every such request the fleet must spend at least a minimum amount of
server time, ``w_i``, derived from the latency profile alone:

* prompt: every prompt token rides in some iteration, which then costs ``P(n) - P(0)``
  more than without it (the profile's cost model); ``P(n) - P(0) >= c_min * n`` with
  ``c_min = min over 1 <= n <= maxNumBatchedTokens of (P(n) - P(0)) / n``;
* decode: tokens 2..o come from ``m = o - 1`` iterations, each of which costs
  ``D(B_t, kv_t) >= D(B_t, 0) + kappa * kv_t`` (``kappa``: the smallest slope of the decode
  table in KV) and is shared by its ``B_t`` sequences. Charging each sequence
  ``D(B_t, 0) / B_t``: with ``u_t = D(B_t, 0)`` the iteration cannot hold more than
  ``Bmax(u_t)`` (the largest batch with ``D(B, 0) <= u_t``, at most maxNumSeqs)
  sequences, so the charge is at least ``h(u_t) = u_t / Bmax(u_t)``; the request's
  iterations must fit its deadline, ``sum u_t <= A_i - pf_i`` (``A_i = TTFT + m*TPOT``,
  ``pf_i`` the least time its own prefill iterations take), and Jensen's inequality on
  the lower convex envelope ``conv h`` gives ``sum h(u_t) >= m * H((A_i - pf_i) / m)``
  with ``H(x) = min over u <= x of conv h(u)``. The KV part adds
  ``kappa * (m*p + m(m+1)/2)`` (the sequence's own context, p + j at its j-th decode).
* a request whose least prefill time exceeds its TTFT, or whose decode cannot fit even
  one-sequence iterations, cannot be served: it must be among the misses.

The per-iteration costs that are left out (the weight read of prefill-only iterations,
other sequences' KV, queueing, KV capacity, head-of-line blocking) only add time. The
served requests must be done between the start of the measurement window and their
deadlines, on at most N servers: with ``D`` the latest deadline among them,
``sum w_i <= N * (D - measure_from)``. The fleet may choose which requests to drop (up
to the miss budget) and which D; the condition is checked on a grid of D values that
includes the last deadline (between grid points the condition at the next grid point
is implied, so the check stays necessary).

Assumptions (the simulator's model, and what the bound does not cover): iteration times
are exactly the profile's (``iteration_s = D(B, kv) + P(n) - P(0)``, ``D`` non-decreasing
in B and KV); the fleet has N servers the whole time (no autoscaling hook adding any,
no power cap making any slower, which would only lower goodput); the miss budget is per
tier, as the simulator counts it. Under these assumptions **no policy can pass at a
rate where the condition fails**; tests/sim/test_bound.py runs every policy on
generated scenarios and checks exactly that.

The bound is a necessary condition, not a schedule: it lets every request ride in the
most efficient batch its own deadline allows, ignores every interaction between
requests and lets the policy drop the most expensive requests for free. So no real
policy reaches it; the **best static partition** (:mod:`kubetier.sim.partition`: tiers
on their own servers, the split found by search) is the achievable reference beside it.

``fluid_estimate`` (the former "fluid bound": tiers at their mean lengths, mean TPOT
<= target) is kept only to pick offered loads for benchmarks: it is *not* a bound
(per-token deadlines let short requests use their TTFT slack, a 90% target lets a
policy drop the longest 10%, and it charged full-size chunks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kubetier.policy.latency import LatencyModel


@dataclass(frozen=True)
class WorkModel:
    """The profile's least costs (seconds), precomputed once per model."""

    c_min: float  # least charge of one prompt token (its share of the iteration)
    c_time: float  # least extra time of one prompt token in an iteration (theta = 0)
    p0: float  # P(0): the least time of any iteration
    mbt: int
    kappa: float  # least decode-time slope per KV token
    hull_u: np.ndarray  # decreasing part of conv h: iteration times ...
    hull_h: np.ndarray  # ... and per-sequence charges (non-increasing)

    @classmethod
    def of(cls, model: LatencyModel, theta: float = 0.0) -> WorkModel:
        """``theta``: the share of each iteration's weight read P(0) charged to its
        prompt tokens (the rest to its decode tokens); every theta in [0, 1] gives a
        valid bound, the tightest is used."""
        mbt = model.max_num_batched_tokens
        p0 = model.decode_iteration_s(1, 0)
        ns = np.arange(1, mbt + 1)
        pn = np.array([model.iteration_s(0, 0, int(n)) for n in ns])
        c_min = max(0.0, float(((pn - (1.0 - theta) * p0) / ns).min()))
        c_time = max(0.0, float(((pn - p0) / ns).min()))
        seqs = model.max_num_seqs
        u = np.array([model.decode_iteration_s(b, 0) for b in range(1, seqs + 1)])
        # Bmax(u) for u = D(B, 0) is at least B, so these points are upper ends of the
        # sawtooth's minima; the sawtooth's minima are exactly the points where Bmax
        # steps, i.e. the last B with each distinct D(B, 0): keep those.
        keep = np.append(u[1:] > u[:-1], True)
        u, h = u[keep], (u[keep] - theta * p0) / (np.flatnonzero(keep) + 1)
        hu, hh = _lower_hull(u, h)
        j = int(np.argmin(hh))
        kv_grid = model.to_dict()["decode"]["kvTokens"]
        kappa = math.inf
        for b in range(1, seqs + 1):
            vals = [model.decode_iteration_s(b, k) for k in kv_grid]
            for a, c, ka, kc in zip(vals, vals[1:], kv_grid, kv_grid[1:]):
                kappa = min(kappa, (c - a) / (kc - ka))
        return cls(c_min, c_time, p0, mbt, max(0.0, kappa), hu[: j + 1], hh[: j + 1])

    def request_work(
        self, prompt: np.ndarray, output: np.ndarray, ttft_s: float, tpot_s: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Least server-seconds each request needs if served on time (inf: cannot be)."""
        p = prompt.astype(np.float64)
        m = np.maximum(output.astype(np.float64) - 1.0, 0.0)
        pf = np.ceil(p / self.mbt) * self.p0 + self.c_time * p
        work = self.c_min * p + self.kappa * (m * p + m * (m + 1.0) / 2.0)
        budget = ttft_s + m * tpot_s - pf
        feasible = pf <= ttft_s + 1e-12
        has_dec = m > 0
        x = np.where(has_dec, budget / np.maximum(m, 1.0), np.inf)
        feasible &= ~has_dec | (x >= self.hull_u[0] - 1e-15)
        per_tok = np.interp(np.clip(x, self.hull_u[0], self.hull_u[-1]), self.hull_u, self.hull_h)
        work = work + np.where(has_dec, m * per_tok, 0.0)
        return np.where(feasible, work, np.inf), ttft_s + m * tpot_s


def _lower_hull(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pts: list[tuple[float, float]] = []
    for px, py in zip(x.tolist(), y.tolist()):
        while len(pts) >= 2:
            (ax, ay), (bx, by) = pts[-2], pts[-1]
            if (bx - ax) * (py - ay) - (by - ay) * (px - ax) <= 0:  # b is not below the chord a-p
                pts.pop()
            else:
                break
        pts.append((px, py))
    return np.array([q[0] for q in pts]), np.array([q[1] for q in pts])


def necessary_condition(
    t: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    tier: np.ndarray,
    measure_from_s: float,
    measure_until_s: float,
    tiers: list[tuple[float, float, float]],
    wms: list[WorkModel],
    n_servers: int,
    grid: int = 40,
) -> float:
    """``tiers``: per tier (ttft_s, tpot_s, attainment_percent). Returns the smallest
    ratio of needed to available server time, ``sum w_i / (N * (D - measure_from))``,
    over the grid of D: a run can pass only if it is <= 1 (inf when some tier cannot
    meet its target at all). Every weight-read split ``wms`` gives a valid condition;
    the largest ratio is returned."""
    return max(
        _ratio(t, prompt, output, tier, measure_from_s, measure_until_s, tiers, wm, n_servers, grid) for wm in wms
    )


def work_models(model: LatencyModel) -> list[WorkModel]:
    return [WorkModel.of(model, th) for th in (0.0, 0.25, 0.5, 0.75, 1.0)]


def _ratio(t, prompt, output, tier, measure_from_s, measure_until_s, tiers, wm, n_servers, grid) -> float:
    m = (t >= measure_from_s) & (t < measure_until_s)
    works, deadlines, needs = [], [], []
    for k, (ttft_s, tpot_s, att) in enumerate(tiers):
        sel = m & (tier == k)
        n = int(sel.sum())
        if n == 0:
            continue
        need = n - int(n * (1.0 - att / 100.0) + 1e-9)
        w, life = wm.request_work(prompt[sel], output[sel], ttft_s, tpot_s)
        works.append(w)
        deadlines.append(t[sel] + life)
        needs.append(need)
    if not works:
        return 0.0
    all_d = np.concatenate(deadlines)
    lo = max(measure_from_s + 1e-9, float(all_d.min()))
    cands = np.unique(np.concatenate([np.quantile(all_d, np.linspace(0.0, 1.0, grid)), [all_d.max()]]))
    best = math.inf
    for dmax in cands:
        if dmax < lo:
            continue
        total = 0.0
        for w, d, need in zip(works, deadlines, needs):
            ok = w[(d <= dmax) & np.isfinite(w)]
            if len(ok) < need:
                total = math.inf
                break
            if need:
                total += float(np.partition(ok, need - 1)[:need].sum())
        avail = n_servers * (dmax - measure_from_s)
        if avail > 0:
            best = min(best, total / avail)
    return best


def fluid_estimate(
    model: LatencyModel, n_servers: int, tiers: list[tuple[str, float, float, float, float, float]]
) -> float:
    """Rough capacity (requests/s) from mean lengths, for choosing benchmark loads only
    (NOT a bound, see the module docstring). ``tiers``: (name, share, mean_prompt,
    mean_output, tpot_s, ttft_s)."""
    load = 0.0
    p0 = model.decode_iteration_s(1, 0)
    for _, share, p, o, tpot_s, _ttft in tiers:
        if share <= 0:
            continue
        p, o = max(1.0, p), max(1.0, o)
        best = 0.0
        for B in range(1, model.max_num_seqs + 1):
            C = model.max_num_batched_tokens - B
            if C < 1 or B * (p + o) > model.kv_capacity_tokens:
                break
            tau = model.decode_iteration_s(B, int(B * (p + o / 2))) + B * p / o / C * (model.iteration_s(0, 0, C) - p0)
            if tau <= tpot_s:
                best = max(best, B / (o * tau))
        if best <= 0:
            return 0.0
        load += share / best
    return n_servers / load if load > 0 else 0.0
