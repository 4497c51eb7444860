"""The baselines the fleet simulator compares kubetier with (routing kinds other than "slo").

``"least-loaded"`` / ``"static-partition"``: own bin, smallest batch with room;
``"round-robin"``: own bin, next server with room; ``"pool-least-loaded"``
(join-shortest-queue over every server: smallest batch, then least KV) and
``"pool-round-robin"``: tier-blind over the whole fleet; ``"two-class"``: the
tightest-TPOT tier(s) on their own servers, every other tier pooled (least loaded) over
the rest. All ignore the SLO checks and never spill; "room" is a free sequence slot and
KV for the prompt plus the tier's configured mean output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubetier.policy.routing_index import RANK_MASK, Bin, ServerEntry

if TYPE_CHECKING:
    from kubetier.policy.routing import Decision, RoutingPolicy, TierSLO

__all__ = ["decide_least_loaded", "decide_pool", "decide_round_robin", "has_room", "pool_bins"]


def has_room(e: ServerEntry, prompt: int, H: int) -> bool:
    ld = e.load
    c = e.costs
    return ld.running + 1 <= c.max_seqs and ld.kv_tokens + prompt + H <= c.kv_cap


def decide_least_loaded(p: RoutingPolicy, t: TierSLO, prompt: int) -> Decision | None:
    keys = p._bins[t.name].keys
    H = t.mean_output_tokens
    for k in range(min(len(keys), p.max_checks)):
        e = p._by_rank[keys[k] & RANK_MASK]
        if has_room(e, prompt, H):
            return p._route(e.load.server_id, "least-loaded")
    return None


def pool_bins(p: RoutingPolicy, t: TierSLO) -> list[Bin]:
    """The bins a tier-blind or two-class baseline request may use."""
    if p.kind != "two-class":
        return list(p._bins.values())
    tightest = min(u.tpot_ms for u in p.tiers.values())
    if t.tpot_ms == tightest:
        return [b for b in p._bins.values() if b.tier.tpot_ms == tightest]
    rest = [b for b in p._bins.values() if b.tier.tpot_ms != tightest]
    return rest or [p._bins[t.name]]


def decide_pool(p: RoutingPolicy, t: TierSLO, prompt: int) -> Decision | None:
    H = t.mean_output_tokens
    bins = pool_bins(p, t)
    if p.kind == "pool-round-robin":
        order = [sid for b in bins for sid in b.order]
        n = len(order)
        if n == 0:
            return None
        start = p._pool_rr_next % n
        for k in range(min(n, p.max_checks)):
            sid = order[(start + k) % n]
            e = p._servers[sid]
            if e.key is not None and has_room(e, prompt, H):
                p._pool_rr_next = (start + k + 1) % n
                return p._route(sid, "round-robin")
        return None
    best = None  # least loaded (running, kv) with room across the bins
    for b in bins:
        keys = b.keys
        for k in range(min(len(keys), p.max_checks)):
            key = keys[k]
            if best is not None and key >= best:
                break
            if has_room(p._by_rank[key & RANK_MASK], prompt, H):
                best = key
                break
    return p._route(p._by_rank[best & RANK_MASK].load.server_id, "least-loaded") if best is not None else None


def decide_round_robin(p: RoutingPolicy, t: TierSLO, prompt: int) -> Decision | None:
    b = p._bins[t.name]
    n = len(b.order)
    if n == 0:
        return None
    start = b.rr_next % n
    for k in range(min(n, p.max_checks)):
        sid = b.order[(start + k) % n]
        e = p._servers[sid]
        if e.key is not None and has_room(e, prompt, t.mean_output_tokens):
            b.rr_next = (start + k + 1) % n
            return p._route(sid, "round-robin")
    return None
