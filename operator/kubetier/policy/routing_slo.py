"""The SLO policy (kind ``"slo"``): own bin, most loaded feasible, spill upward, rebin.

For a request of tier T (see :mod:`kubetier.policy.routing` for the rules): the servers
of T's bin, then of strictly tighter-TPOT bins (nearest first), each scanned from the
most loaded down; the first that passes :func:`~kubetier.policy.routing_feasibility.feasible`
(and, for a spill, leaves the host tier room for a typical request of its own) wins.
The scan jumps level by level (running batch) to the most loaded server whose KV is
under the level's threshold (pre-filters memoised per bin, see :func:`level_bound` and
:func:`kv_bound`): every candidate still gets the full check, and a full scan in the
same order returns the same decision (tests/policy/test_routing_equivalence.py).

Never "wait" while an idle server could serve: when the check budget
(``max_checks``) runs out, the least loaded server of each usable bin is checked too.
"""

from __future__ import annotations

import bisect as _bisect
from typing import TYPE_CHECKING, Final

from kubetier.policy.bins import BinCount, donor_bin, may_move
from kubetier.policy.routing_costs import INF, KV_QUANTUM, MEMO_LIMIT, IterationCosts, prompt_class
from kubetier.policy.routing_feasibility import (
    FLOOR_MARGIN_S,
    feasible,
    floors_refuse,
    host_keeps_room,
    prefill_share_s,
    tpot_kv_ok,
)
from kubetier.policy.routing_index import KV_MASK, KV_SHIFT, RANK_MASK, RUN_SHIFT, Bin, ServerEntry

if TYPE_CHECKING:
    from kubetier.policy.routing import Decision, RoutingPolicy, TierSLO

# Final: the compiled simulator calls them from C statics, not a module-dict lookup per call
bisect_left: Final = _bisect.bisect_left
bisect_right: Final = _bisect.bisect_right

__all__ = ["RESCUE_CHECKS", "decide_slo", "kv_bound", "level_bound", "rebin_idle_server", "rescue_route"]

# Bounds of the level memo key's fields (decide_slo): horizons (quantised mean outputs)
# under 2**19 tokens, refill and prompt classes (8 per octave) under 2**12.
_H_LIMIT: Final = 1 << 19
_CLASS_LIMIT: Final = 1 << 12

# Servers a rescue (rescue_route) checks per bin, least loaded first.
RESCUE_CHECKS: Final = 8


def _route_of(e: ServerEntry, own: bool) -> Decision:
    from kubetier.policy.routing import Decision

    routes = e.routes
    if routes is None:
        sid = e.load.server_id
        routes = e.routes = (
            Decision("route", sid, spilled=False, reason="own-bin"),
            Decision("route", sid, spilled=True, reason="spill"),
        )
    return routes[0] if own else routes[1]


def decide_slo(p: RoutingPolicy, t: TierSLO, prompt: int, ttft_budget_s: float) -> Decision | None:
    checks = checks0 = p.max_checks
    per_level = p.max_checks_per_level
    by_rank = p._by_rank
    traffic = p.traffic
    own = True
    H = traffic[t.name].h
    pc, p_lb = prompt_class(prompt)
    own_tpot_s = p._bins[t.name].tpot_s
    slack = p.protected_slack
    # the prompt's context cost (IterationCosts.context_s), once per model met
    ctx_p = -1.0
    ctx_c: IterationCosts | None = None
    # floors_refuse's TTFT limit (its floors beyond this: the full check would fail)
    floor_limit = ttft_budget_s + FLOOR_MARGIN_S
    # the burst check runs only with a finite budget and pending tokens (feasible)
    burst_floor = ttft_budget_s != INF and p.burst_slack != INF
    for b in p._route_bins[t.name]:
        keys = b.keys
        if not keys:
            own = False
            continue
        host = traffic[b.tier.name]
        tpot_s = b.tpot_s + slack * b.ttft_s / host.h
        burst_s = p.burst_slack * b.ttft_s
        host_h = host.h if p.shared_slack else 0
        refill = host.r_value * p.turnover
        hh = host.h
        rc = host.r_class
        if hh < _H_LIMIT and H < _H_LIMIT and rc < _CLASS_LIMIT and pc < _CLASS_LIMIT:
            memo_key = (hh << 43) | (rc << 31) | (H << 12) | pc  # 62 bits: an unboxed int compiled
        else:  # (never in practice) the wide layout, at or above 2**64: no collision
            memo_key = (hh << 64) | (rc << 40) | (H << 16) | pc
        lm = b.level_memo.get(memo_key)
        if lm is None:
            if len(b.level_memo) > MEMO_LIMIT:
                b.level_memo.clear()
            cap = level_bound(b, H, p_lb, tpot_s, refill)
            empty: list[int | None] = [None] * (cap + 1) if cap >= 0 else []
            lm = b.level_memo[memo_key] = (cap, empty)
        cap, thresholds = lm
        probe = 0 if own else host.probe
        hi = bisect_left(keys, (cap + 1) << RUN_SHIFT)  # keys[:hi] have running <= cap
        while hi > 0:
            k = keys[hi - 1]
            level = k >> RUN_SHIFT
            thr = thresholds[level]
            if thr is None:
                thr = thresholds[level] = level_threshold(b, level, H, p_lb, tpot_s, refill)
            if k <= thr:
                j = hi  # the most loaded server of the level passes the pre-filter
            else:
                # the last key <= thr: a few steps down first (levels hold a few servers
                # each), then a binary search
                j = hi - 1  # keys[j:hi] > thr
                stop = hi - 4 if hi > 4 else 0
                while j > stop and keys[j - 1] > thr:
                    j -= 1
                if j > 0 and keys[j - 1] > thr:
                    j = bisect_right(keys, thr, 0, j)
                if j == 0 or keys[j - 1] >> RUN_SHIFT != level:
                    hi = j  # no candidate at this level: on to the next lower one
                    continue
            n = per_level
            while True:
                j -= 1
                e = by_rank[keys[j] & RANK_MASK]
                c = e.costs
                # The floors pay once the scan has met a refusal (a busy fleet: at 1,000
                # servers two in three candidates); the first candidate, which usually
                # passes, goes straight to the full check.
                if checks == checks0 or not floors_refuse(e, prompt, floor_limit, tpot_s, burst_s, burst_floor):
                    if c is not ctx_c:
                        ctx_c = c
                        ctx_p = c.context_s(prompt)
                    if feasible(e, prompt, H, ttft_budget_s, tpot_s, refill, own_tpot_s, burst_s, host_h, ctx_p) and (
                        own or host_keeps_room(e, prompt, b.ttft_s, probe)
                    ):
                        return _route_of(e, own)
                checks -= 1
                if checks <= 0:
                    return _least_loaded_fallback(p, t, prompt, H, ttft_budget_s)
                n -= 1
                if n <= 0:
                    hi = bisect_left(keys, level << RUN_SHIFT, 0, j)  # skip the rest of the level
                    break
                if j == 0 or keys[j - 1] >> RUN_SHIFT != level:
                    hi = j
                    break
        own = False
    return None


def _least_loaded_fallback(p: RoutingPolicy, t: TierSLO, prompt: int, H: int, ttft_budget_s: float) -> Decision | None:
    """The check budget ran out: before answering "wait", try the least loaded server of
    each usable bin (an idle server that could serve must not be left idle)."""
    own = True
    own_tpot_s = p._bins[t.name].tpot_s
    for b in p._route_bins[t.name]:
        if b.keys:
            e = p._by_rank[b.keys[0] & RANK_MASK]
            host = p.traffic[b.tier.name]
            refill = host.refill()[1] * p.turnover
            tpot_s = b.tpot_s + p.protected_slack * b.ttft_s / host.h
            burst_s = p.burst_slack * b.ttft_s
            host_h = host.h if p.shared_slack else 0
            if feasible(e, prompt, H, ttft_budget_s, tpot_s, refill, own_tpot_s, burst_s, host_h) and (
                own or host_keeps_room(e, prompt, b.ttft_s, host.probe_prompt())
            ):
                return _route_of(e, own)
        own = False
    return None


def level_threshold(b: Bin, level: int, H: int, prompt: int, tpot_s: float, refill: float) -> int:
    """The largest packed key of this level that passes the KV pre-filter
    (:func:`kv_bound`); below the level's first key when none can."""
    kv_max = kv_bound(b, level, H, prompt, tpot_s, refill)
    if kv_max < 0:
        return (level << RUN_SHIFT) - 1
    kv = KV_MASK if kv_max >= KV_MASK else int(kv_max)  # kv <= kv_max  <=>  kv <= floor(kv_max)
    return (level << RUN_SHIFT) | (kv << KV_SHIFT) | RANK_MASK


def level_bound(b: Bin, H: int, prompt: int, tpot_s: float, refill: float) -> int:
    """Highest running batch at which some server of the bin could pass the TPOT and
    KV checks (empty cache, nothing queued, prompt rounded down): levels above it
    cannot hold a feasible server. The check is monotone in the batch: binary search."""
    best = -1
    for c in b.costs:
        lo, hi = -1, c.max_seqs - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if tpot_kv_ok(c, mid, 0, 0, prompt, H, tpot_s, refill):
                lo = mid
            else:
                hi = mid - 1
        best = max(best, lo)
    return best


def kv_bound(b: Bin, running: int, H: int, prompt: int, tpot_s: float, refill: float) -> float:
    """Most KV a server at this batch may hold and still pass the TPOT and KV checks
    (nothing queued, prompt rounded down); -1 if none. The TPOT check solved for KV:
    D(B, kv + P + B*H) <= tpot / scale - prefill share, with D linear in KV between grid
    points. Only a pre-filter: the full check runs on the candidate it selects."""
    best = -1.0
    B = running + 1
    for c in b.costs:
        if c.max_seqs < B or c.mbt - B < 1:
            continue
        budget = tpot_s / c.scale - prefill_share_s(c, running, prompt, H, refill)
        grow = prompt + B * H
        kv = min(c.max_kv(B, budget) - grow, c.kv_cap - grow)
        if kv >= 0:
            best = max(best, kv + KV_QUANTUM)  # the full check rounds KV up to a quantum
    return best


def rebin_idle_server(p: RoutingPolicy, t: TierSLO, prompt: int, ttft_budget_s: float) -> Decision | None:
    """Shared pool (PolyServe's server reassignment): when no server of the request's own
    or tighter bins is feasible, an idle server of another bin that keeps at least one
    other idle server moves to the request's bin (the donor, and the per-tier limits, are
    :func:`kubetier.policy.bins.donor_bin`'s choice); failing that (``pull_loaded``), the
    least loaded server of a looser bin that can take the request under this bin's
    tighter TPOT moves here (:func:`pull_looser_server`)."""
    d = _rebin_idle(p, t, prompt, ttft_budget_s)
    if d is None and p.pull_loaded:
        d = pull_looser_server(p, t, prompt, ttft_budget_s)
    return d


def pull_looser_server(p: RoutingPolicy, t: TierSLO, prompt: int, ttft_budget_s: float) -> Decision | None:
    """Move a busy server from a looser-TPOT bin into the request's bin when it passes
    the full check there. Safe for the requests already on it: from now on it is judged
    against the tighter TPOT, and their own (looser) tier may still spill onto it. The
    donor bin keeps at least one server. Without this a shared pool split evenly over
    skewed traffic leaves the busy tight tier waiting beside half-empty loose servers
    (generated scenarios where the pooled least-loaded baseline won)."""
    own = p._bins[t.name]
    host = p.traffic[t.name]
    H = host.h
    tpot_s = own.tpot_s + p.protected_slack * own.ttft_s / H
    refill = host.r_value * p.turnover
    cands = sorted(
        b.keys[0]
        for b in p._bins.values()
        if b.tier.tpot_ms > t.tpot_ms
        and len(b.keys) > 1
        and may_move(b.tier.name, len(b.keys), t.name, len(own.keys), p.bin_limits)
    )
    for key in cands[:4]:
        e = p._by_rank[key & RANK_MASK]
        burst_s = p.burst_slack * own.ttft_s
        if feasible(e, prompt, H, ttft_budget_s, tpot_s, refill, own.tpot_s, burst_s, H if p.shared_slack else 0):
            ld = e.load
            p.remove_server(ld.server_id)
            ld.tier = t.name
            p.upsert_server(ld)
            return p._route(ld.server_id, "rebin")
    return None


def _rebin_idle(p: RoutingPolicy, t: TierSLO, prompt: int, ttft_budget_s: float) -> Decision | None:
    rows = [
        BinCount(name, len(b.keys), bisect_left(b.keys, 1 << KV_SHIFT), b.tier.tpot_ms) for name, b in p._bins.items()
    ]
    donor = donor_bin(t.name, rows, p.bin_limits)  # running 0 and no KV held = idle
    if donor is None:
        return None
    best = p._bins[donor]
    sid = p._by_rank[best.keys[0] & RANK_MASK].load.server_id
    e = p._servers[sid]
    if e.load.queued_prefill_tokens:
        return None
    ld = e.load
    p.remove_server(sid)
    ld.tier = t.name
    p.upsert_server(ld)
    e = p._servers[sid]
    refill = p.traffic[t.name].refill()[1] * p.turnover
    if not feasible(e, prompt, p.traffic[t.name].horizon(), ttft_budget_s, p._bins[t.name].tpot_s, refill):
        return None
    return p._route(sid, "rebin")


def rescue_route(p: RoutingPolicy, t: TierSLO, prompt: int, ttft_budget_s: float) -> Decision | None:
    """One certain miss for at most one possible one: the request found no feasible
    server and cannot wait for a batch to drain (the caller checks that), so it goes to
    a server of its usable bins that runs at most one sequence and passes every check
    but the prefill burst (capacity, first token, per-token and second token, and for a
    spill the host's room). The burst may push that one running sequence behind its
    deadlines by more than the slack credited to it; without the route the request is
    rejected once its wait runs out, a certain miss. Least loaded first, at most
    ``RESCUE_CHECKS`` servers per bin.

    Held-out seeds 2019 and 5003 (70B, 12-30k-token prompts, TTFT 1.2-4 s): every
    server of the tight bin ran one sequence, the burst check refused each long prompt
    on all of them, nothing freed within the prompt's wait budget and the request was
    rejected: 22 of 221 against least-loaded's 8 (which routes them anyway)."""
    own = True
    H = p.traffic[t.name].h
    own_tpot_s = p._bins[t.name].tpot_s
    for b in p._route_bins[t.name]:
        keys = b.keys
        hi = min(bisect_left(keys, 2 << RUN_SHIFT), RESCUE_CHECKS)  # running <= 1, least loaded first
        if hi:
            host = p.traffic[b.tier.name]
            tpot_s = b.tpot_s + p.protected_slack * b.ttft_s / host.h
            refill = host.r_value * p.turnover
            for j in range(hi):
                e = p._by_rank[keys[j] & RANK_MASK]
                if feasible(e, prompt, H, ttft_budget_s, tpot_s, refill, own_tpot_s) and (
                    own or host_keeps_room(e, prompt, b.ttft_s, host.probe)
                ):
                    return p._route(e.load.server_id, "rescue") if own else _route_of(e, False)
        own = False
    return None
