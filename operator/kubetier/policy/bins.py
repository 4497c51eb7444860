"""Dynamic bins of a shared pool: which tier's bin each pool server serves.

In a shared pool (PolyServe, 2025: "server reassignment") the servers are not tied to a
tier: each serves one tier's bin at a time, and a server that sits idle in one bin may
move to the bin of a tier whose own and tighter bins have no feasible server. The live
router (``kubetier.router.fleet``, pool servers of a ModelService with
``spec.sharedPool``) and the fleet simulator (``fleet.pool`` scenarios) move servers with
the same functions: :func:`donor_bin` is called by
:func:`kubetier.policy.routing_slo.rebin_idle_server` on every routing decision that
found no feasible server, :func:`join_bin` places a server that joins the pool, and
:func:`refill_move` restores a bin that fell below its minimum (a server left).

Per-tier limits (``BinLimits``, from ``tiers[].replicas.min/max`` of the ModelService):
a move never takes a bin below its ``min_servers`` nor a bin above its ``max_servers``.
With no limits the rule is the simulator's original one: the donor keeps at least one
other idle server, so a burst arriving at the donor tier still finds an idle server.

Pure: no clock and no randomness is needed (the decision depends only on the bins'
current counts; ties go to the tier listed first, i.e. spec order), so router and
simulator make the same move from the same state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["NO_LIMITS", "BinCount", "BinLimits", "donor_bin", "join_bin", "may_move", "refill_move"]


@dataclass(frozen=True, slots=True)
class BinLimits:
    """How many pool servers one tier's bin may hold."""

    min_servers: int = 0
    max_servers: int | None = None  # None: no upper limit

    def __post_init__(self) -> None:
        if self.min_servers < 0:
            raise ValueError(f"min_servers must be >= 0, got {self.min_servers}")
        if self.max_servers is not None and self.max_servers < max(self.min_servers, 1):
            raise ValueError(f"max_servers must be >= max(min_servers, 1), got {self.max_servers}")

    def room(self, count: int) -> bool:
        """The bin may take one more server."""
        return self.max_servers is None or count < self.max_servers

    def spare(self, count: int) -> bool:
        """The bin may give one server away."""
        return count > self.min_servers


NO_LIMITS = BinLimits()


@dataclass(frozen=True, slots=True)
class BinCount:
    """One bin as the move rules see it: its servers and how many of them are idle
    (nothing running, no KV held). ``tpot_ms`` breaks ties between donors."""

    tier: str
    servers: int
    idle: int
    tpot_ms: float


def donor_bin(target: str, bins: Iterable[BinCount], limits: Mapping[str, BinLimits] | None = None) -> str | None:
    """The bin that gives an idle server to ``target``'s bin, or None.

    The donor is the bin with the most idle servers, at least two (it keeps one idle for
    its own next burst), among those above their minimum; equal counts go to the looser
    TPOT (the tighter tier's capacity is the scarcer), then to the bin listed first.
    None when ``target`` is at its maximum or no bin can spare an idle server."""
    lim = limits or {}
    rows = list(bins)
    own = next((b for b in rows if b.tier == target), None)
    if own is not None and not lim.get(target, NO_LIMITS).room(own.servers):
        return None
    best: BinCount | None = None
    for b in rows:
        if b.tier == target or b.idle < 2 or not lim.get(b.tier, NO_LIMITS).spare(b.servers):
            continue
        if best is None or b.idle > best.idle or (b.idle == best.idle and b.tpot_ms > best.tpot_ms):
            best = b
    return best.tier if best is not None else None


def may_move(
    src: str, src_servers: int, dst: str, dst_servers: int, limits: Mapping[str, BinLimits] | None = None
) -> bool:
    """Whether one server may leave bin ``src`` (holding ``src_servers``) for bin ``dst``
    (holding ``dst_servers``) within the per-tier limits: the check for any other move
    rule (for example one that moves a busy server)."""
    lim = limits or {}
    return lim.get(src, NO_LIMITS).spare(src_servers) and lim.get(dst, NO_LIMITS).room(dst_servers)


def join_bin(counts: Mapping[str, int], tiers: Sequence[str], limits: Mapping[str, BinLimits] | None = None) -> str:
    """The bin a server joining the pool starts in: the bin furthest below its minimum;
    else the bin with the fewest servers that is below its maximum; else the first tier.
    Ties go to the tier listed first (spec order)."""
    if not tiers:
        raise ValueError("join_bin needs at least one tier")
    lim = limits or {}

    def deficit(t: str) -> int:
        return lim.get(t, NO_LIMITS).min_servers - counts.get(t, 0)

    short = max(tiers, key=deficit)  # max() keeps the first of equal keys
    if deficit(short) > 0:
        return short
    open_bins = [t for t in tiers if lim.get(t, NO_LIMITS).room(counts.get(t, 0))]
    if not open_bins:
        return tiers[0]
    return min(open_bins, key=lambda t: counts.get(t, 0))


def refill_move(bins: Sequence[BinCount], limits: Mapping[str, BinLimits] | None = None) -> tuple[str, str] | None:
    """(from, to): one idle server moves into a bin below its minimum from a bin above
    its own minimum (the one with the most idle servers); None when every bin holds its
    minimum or nothing can move. Call it again until None to restore every minimum."""
    lim = limits or {}
    short = [b for b in bins if b.servers < lim.get(b.tier, NO_LIMITS).min_servers]
    if not short:
        return None
    needy = max(short, key=lambda b: lim.get(b.tier, NO_LIMITS).min_servers - b.servers)
    donors = [b for b in bins if b.tier != needy.tier and b.idle >= 1 and lim.get(b.tier, NO_LIMITS).spare(b.servers)]
    if not donors:
        return None
    donor = max(donors, key=lambda b: b.idle)
    return donor.tier, needy.tier
