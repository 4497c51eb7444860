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
    ctx_a: float = 0.0  # the profile's cost of one (chunk token, earlier prompt token) pair
    overhead_s: float = 0.0  # the profile's per-request overhead, spent before admission

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
        return cls(
            c_min,
            c_time,
            p0,
            mbt,
            max(0.0, kappa),
            hu[: j + 1],
            hh[: j + 1],
            max(0.0, model.context_s_per_pair),
            max(0.0, model.request_overhead_s),
        )

    def prefill_parts(self, prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(least charge, least time) of each prompt's own prefill iterations.

        Attention to earlier chunks: a prompt of p tokens cut into chunks of at most
        ``mbt`` has ``(p^2 - sum c_i^2) / 2`` (chunk token, earlier token) pairs, least when
        the chunks are as large as possible; each costs ``ctx_a`` in the iteration that
        carries the chunk (``iteration_s``'s ``a * x`` term), so it is the prompt's own."""
        p = prompt.astype(np.float64)
        full = np.floor(p / self.mbt)
        rest = p - full * self.mbt
        pairs = np.maximum(0.0, (p * p - full * self.mbt * self.mbt - rest * rest) / 2.0)
        ctx = self.ctx_a * pairs
        return self.c_min * p + ctx, np.ceil(p / self.mbt) * self.p0 + self.c_time * p + ctx

    def decode_prefix_work(
        self, q: np.ndarray, p: np.ndarray, pf: np.ndarray, ttft_s: float, tpot_s: float
    ) -> np.ndarray:
        """Least charge of a request's first ``q`` decode iterations (tokens 2..q+1, the
        last due ``ttft + q*tpot`` after arrival), given its prompt ``p`` and least prefill
        time ``pf``. The q iterations run after its prefill, so they take at most
        ``ttft + q*tpot - pf`` together; each is at least ``D(B, 0) + kappa * own KV``
        (own KV ``p + j`` at the j-th), so their ``D(B, 0)`` parts sum to at most
        ``x*q`` with ``x = (ttft + q*tpot - pf - kappa*(q*p + q(q+1)/2)) / q``, and Jensen
        gives a charge of at least ``q * H(x) + kappa * (q*p + q(q+1)/2)``. Where x is
        below the single-sequence iteration, the tokens cannot be on time: inf."""
        q = q.astype(np.float64)
        kv = q * p + q * (q + 1.0) / 2.0
        has = q > 0
        qs = np.maximum(q, 1.0)
        x = (ttft_s + q * tpot_s - pf - self.kappa * kv) / qs
        ok = ~has | (x >= self.hull_u[0] - 1e-15)
        per_tok = np.interp(np.clip(x, self.hull_u[0], self.hull_u[-1]), self.hull_u, self.hull_h)
        work = np.where(has, q * per_tok + self.kappa * kv, 0.0)
        return np.where(ok, work, np.inf)

    def request_work(
        self, prompt: np.ndarray, output: np.ndarray, ttft_s: float, tpot_s: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Least server-seconds each request needs if served on time (inf: cannot be),
        and its life (last deadline after arrival). ``ttft_s`` is the tier's TTFT; the
        profile's per-request overhead is spent before admission (as the simulator
        and a real router see it), so the prefill has ``ttft_s - overhead_s``."""
        ttft = ttft_s - self.overhead_s
        p = prompt.astype(np.float64)
        m = np.maximum(output.astype(np.float64) - 1.0, 0.0)
        wp, pf = self.prefill_parts(prompt)
        work = wp + self.decode_prefix_work(m, p, pf, ttft, tpot_s)
        work = np.where(pf <= ttft + 1e-12, work, np.inf)
        return work, ttft_s + m * tpot_s


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
    grid: int = 16,
    stop_above: float = math.inf,
) -> float:
    """``tiers``: per tier (ttft_s, tpot_s, attainment_percent). Returns the largest
    ratio of needed to available server time over the checked intervals ``[a, b)``
    (:func:`_ratio`): a run can pass only if it is <= 1 (inf when some tier cannot meet
    its target at all). Every weight-read split ``wms`` gives a valid condition; the
    largest ratio is returned (or the first above ``stop_above``: a caller that only
    asks whether the ratio exceeds it need not compute the rest)."""
    worst = 0.0
    for wm in wms:
        worst = max(worst, _ratio(t, prompt, output, tier, measure_from_s, measure_until_s, tiers, wm, n_servers, grid))
        if worst > stop_above:
            break
    return worst


def work_models(model: LatencyModel) -> list[WorkModel]:
    return [WorkModel.of(model, th) for th in (0.0, 0.25, 0.5, 0.75, 1.0)]


@dataclass
class _TierWork:
    arrival: np.ndarray  # sorted
    p: np.ndarray
    m: np.ndarray
    wp: np.ndarray  # least prefill charge
    pf: np.ndarray  # least prefill time
    ok: np.ndarray  # can be served on time at all
    ttft_s: float  # after the per-request overhead
    tpot_s: float
    budget: int  # misses allowed over the whole measured tier


def _ratio(t, prompt, output, tier, measure_from_s, measure_until_s, tiers, wm, n_servers, grid) -> float:
    """Demand over supply, maximised over intervals ``[a, b)`` of the measured window.

    For an interval, the requests of tier k arriving in it number ``n``; at most the
    tier's whole miss budget ``B_k`` of them are missed, so at least ``n - B_k`` are
    served, and each served one needs, inside the interval, its prefill charge (if its
    first token is due by b) plus the charge of its decode tokens due by b
    (:meth:`WorkModel.decode_prefix_work`): the cheapest ``n - B_k`` of these
    contributions lower-bound the work the fleet does in ``[a, b)``, which is at most
    ``N * (b - a)``. Requests that cannot be served at all count as misses first. Every
    interval gives a necessary condition on its own, so checking a grid of them (a at
    quantiles of the arrivals, b at quantiles of the first-token and last deadlines,
    plus the last deadline) keeps the result a bound; the whole window (a = first
    measured arrival, b = last deadline) is the previous condition's last grid point."""
    meas = (t >= measure_from_s) & (t < measure_until_s)
    tws: list[_TierWork] = []
    for k, (ttft_s, tpot_s, att) in enumerate(tiers):
        sel = meas & (tier == k)
        n = int(sel.sum())
        if n == 0:
            continue
        order = np.argsort(t[sel], kind="stable")
        ta = t[sel][order]
        p = prompt[sel][order].astype(np.float64)
        o = output[sel][order]
        ttft = ttft_s - wm.overhead_s
        w, _ = wm.request_work(prompt[sel][order], o, ttft_s, tpot_s)
        wp, pf = wm.prefill_parts(prompt[sel][order])
        budget = int(n * (1.0 - att / 100.0) + 1e-9)
        ok = np.isfinite(w)
        if int((~ok).sum()) > budget:
            return math.inf  # more requests that cannot be on time than the tier may miss
        tws.append(_TierWork(ta, p, np.maximum(o.astype(np.float64) - 1.0, 0.0), wp, pf, ok, ttft, tpot_s, budget))
    if not tws:
        return 0.0
    arr = np.concatenate([tw.arrival for tw in tws])
    firsts = np.concatenate([tw.arrival + tw.ttft_s for tw in tws])
    lasts = np.concatenate([tw.arrival + tw.ttft_s + tw.m * tw.tpot_s for tw in tws])
    qs = np.linspace(0.0, 1.0, grid)
    a_grid = np.unique(np.quantile(arr, qs))
    b_grid = np.unique(np.concatenate([np.quantile(firsts, qs), np.quantile(lasts, qs), [lasts.max()]]))
    # every tier's contribution at every b at once: shape (len(b_grid), n)
    contribs = []
    for tw in tws:
        due = b_grid[:, None] - tw.arrival[None, :] - tw.ttft_s
        if tw.tpot_s > 0:
            q = np.clip(np.floor(due / tw.tpot_s + 1e-9), 0.0, tw.m[None, :])
        else:
            q = np.where(due >= 0, tw.m[None, :], 0.0)
        c = np.where(due >= -1e-12, tw.wp[None, :], 0.0) + wm.decode_prefix_work(q, tw.p, tw.pf, tw.ttft_s, tw.tpot_s)
        contribs.append(np.where(tw.ok[None, :], c, np.inf))
    los = [np.searchsorted(tw.arrival, a_grid, "left") for tw in tws]
    worst = 0.0
    for i, b in enumerate(b_grid):
        n_a = int(np.searchsorted(a_grid, b, "left"))  # intervals [a, b) with a < b
        if n_a == 0:
            continue
        need = np.zeros(n_a)
        for tw, c_all, lo_all in zip(tws, contribs, los):
            hi = int(np.searchsorted(tw.arrival, b, "left"))
            lo = lo_all[:n_a]
            cnt = hi - lo
            if hi == 0 or not (cnt > tw.budget).any():
                continue
            c = c_all[i, :hi]
            cf = np.where(np.isfinite(c), c, 0.0)
            cs = np.concatenate(([0.0], np.cumsum(cf)))
            total = cs[hi] - cs[lo]
            if tw.budget > 0:
                # the budget most expensive of the suffix [lo, hi) are the misses the
                # fleet chooses (infinite ones first: they cannot be on time)
                order = np.argsort(-c, kind="stable")
                inside = order[None, :] >= lo[:, None]
                chosen = inside & (np.cumsum(inside, axis=1) <= tw.budget)
                total = total - (chosen * cf[order][None, :]).sum(axis=1)
            need += np.where(cnt > tw.budget, total, 0.0)
        worst = max(worst, float((need / (n_servers * (b - a_grid[:n_a]))).max()))
    return worst


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
