"""The server index of the routing policy: every server's load, kept in load order per tier.

Each tier's routable servers (ready, not draining) form a bin, kept sorted by
(running batch, KV tokens, id) as one packed int per server (``RUN_SHIFT``,
``KV_SHIFT``; the id enters as its rank in sorted-id order), so ``bisect`` compares
plain ints and the most loaded server is last. State changes (admit, prefill done,
finish, a scrape's observation, readiness) move one key; most move a server by a few
tokens past no neighbour and replace its key in place.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import TYPE_CHECKING, Any

from kubetier.policy.routing_costs import IterationCosts, costs_for, level_memo_for

if TYPE_CHECKING:
    from kubetier.policy.routing import Decision, ServerLoad, TierSLO

__all__ = ["KV_MASK", "KV_SHIFT", "RANK_MASK", "RUN_SHIFT", "Bin", "ServerEntry", "ServerIndex"]

# A bin orders its servers by one int per server, (running, KV, id rank) packed into
# bit fields, so bisect compares machine-size ints instead of tuples with strings.
# The id rank preserves the order of the server ids (ties go to the id sorting last);
# ranks are spread out so a new id usually fits between its neighbours without
# renumbering. KV beyond 2**32 - 1 tokens (far beyond any real cache) ties at the cap.
RANK_BITS = 32
KV_SHIFT = RANK_BITS
RUN_SHIFT = RANK_BITS + 32
RANK_MASK = (1 << RANK_BITS) - 1
KV_MASK = (1 << 32) - 1
RANK_SPACE = 1 << RANK_BITS
RANK_GAP = 1 << 16  # spacing of ids appended in sorted order


class ServerEntry:
    __slots__ = ("bin", "costs", "in_order", "key", "lag_s", "load", "rank", "routes", "step")

    def __init__(self, load: ServerLoad, costs: IterationCosts, rank: int, b: Bin) -> None:
        self.load = load
        self.costs = costs
        self.bin = b  # the bin of load.tier (a server changes tier only through upsert_server)
        self.routes: tuple[Decision, Decision] | None = None  # its own-bin and spill decisions
        # (decode step now, prefill room next to the batch, cost of a full chunk): what
        # the first-token estimate needs from (running, kv); None after they change.
        self.step: tuple[float, int, float, float] | None = None
        self.key: int | None = None  # packed (running, kv, id rank) in its bin; None = not routable
        self.in_order = False  # listed in its bin's round-robin order
        self.rank = rank  # the id's position in sorted-id order (spread out, see RANK_BITS)
        # Seconds the server's running sequences are behind their per-token deadlines
        # from the prefill chunks it already ran (estimated from its load reports, see
        # lag_after): the burst check adds the pending chunks' lag to it.
        self.lag_s = 0.0


def lag_after(e: ServerEntry, running: int, kv_tokens: int, queued: int) -> float:
    """The running sequences' lag once the server reports (running, kv, queued), from
    what changed since its last report: every iteration gives each running sequence a
    token and costs ``decode``, ``tpot - decode`` below the host's TPOT; the prompt
    tokens prefilled since (queued fell by them) cost a chunk's extra time per chunk on
    top. Iterations = tokens decoded / batch, tokens decoded = committed KV growth plus
    what finished sequences released (their mean KV each). Floored at zero: slack
    banked by fast steps is not credited.

    Without it the burst check saw only the chunks still queued: under most-loaded
    packing the queue of a filling server is refilled by every arrival, its chunks run
    back to back (51 ms iterations against a 25 ms TPOT) and each new check allowed one
    more burst's lag (1,000-server bench from an empty fleet, interactive tier at 86%)."""
    ld = e.load
    if running <= 0:
        return 0.0
    prefilled = ld.queued_prefill_tokens - queued
    finished = ld.running - running
    decoded = kv_tokens - ld.kv_tokens
    if finished > 0 and ld.running > 0:
        decoded += finished * ld.kv_tokens // ld.running
    c = e.costs
    scale = c.scale
    lag = e.lag_s
    if decoded > 0:
        give = e.bin.tpot_s - c.decode(running, kv_tokens) * scale
        lag -= decoded / running * give
    # only sequences that were decoding fall behind (the one whose prompt is prefilled
    # does not; at least one sequence is prefilling while anything is queued)
    if prefilled > 0 and ld.running > 1:
        chunk = c.mbt - running
        if chunk >= 1:
            lag += prefilled * c.chunk_extra(chunk) * scale / chunk
    return lag if lag > 0.0 else 0.0


class Bin:
    """The routable servers of one tier, kept sorted by (running batch, KV tokens, id).

    The order is the load order: the most loaded server is last. A decision walks the
    running levels downward and, inside a level, jumps straight to the most loaded
    server whose KV is under that level's threshold, so servers that are too full are
    never visited one by one.
    """

    __slots__ = ("costs", "keys", "level_memo", "order", "rr_next", "tier", "tpot_s", "ttft_s")

    def __init__(self, tier: TierSLO, tpot_factor: float = 1.0) -> None:
        self.tier = tier
        # the per-token budget admission packs to: the tier's TPOT less the policy's
        # headroom (RoutingPolicy.tpot_headroom)
        self.tpot_s = tier.tpot_ms / 1000.0 * tpot_factor
        self.ttft_s = tier.ttft_ms / 1000.0
        self.keys: list[int] = []  # packed (running, kv, id rank), ascending
        self.order: list[str] = []  # routable server ids, for round-robin
        self.rr_next = 0
        self.costs: list[IterationCosts] = []  # the distinct latency models of its servers
        # (horizon << 16 | prompt class) -> [highest level that can hold a feasible
        # server, per level the largest key that passes the KV pre-filter (None until
        # first needed)]; replaced when the bin's models change (level_memo_for).
        self.level_memo: dict[int, Any] = {}

    def add(self, e: ServerEntry, key: int) -> None:
        insort(self.keys, key)
        e.key = key

    def discard(self, e: ServerEntry) -> None:
        keys = self.keys
        assert e.key is not None
        del keys[bisect_left(keys, e.key)]
        e.key = None


class ServerIndex:
    """Servers by id, bins by tier, ranks of ids; the load-state half of the policy.

    Subclasses (the routing policy) set ``tiers``, ``turnover``, ``protected_slack`` and ``_bins`` before
    adding servers; the index owns ``_servers``, ``_ids``, ``_rank``, ``_by_rank``,
    ``_costs`` and ``_idle_memo``.
    """

    tiers: dict[str, TierSLO]
    turnover: float
    protected_slack: float
    burst_slack: float
    _bins: dict[str, Bin]

    def _init_index(self) -> None:
        self._servers: dict[str, ServerEntry] = {}
        # Server ids in sorted order with their ranks (see RANK_BITS); rank -> entry.
        # Ids of removed servers keep their rank until the next renumbering.
        self._ids: list[str] = []
        self._rank: dict[str, int] = {}
        self._by_rank: dict[int, ServerEntry] = {}
        self._costs: dict[int, IterationCosts] = {}  # id(model) -> memo (models are few and long-lived)
        # tier -> {prompt tokens: fastest idle-server prefill}; cleared when models change
        self._idle_memo: dict[str, dict[int, float]] = {t: {} for t in self.tiers}

    def refresh_level_memos(self) -> None:
        """Re-key every bin's level memo (after a model's learned scale changed)."""
        for b in self._bins.values():
            b.level_memo = level_memo_for(b.costs, b.tpot_s, self.turnover, b.ttft_s * self.protected_slack)
        for m in self._idle_memo.values():
            m.clear()

    def upsert_server(self, load: ServerLoad) -> None:
        if load.tier not in self.tiers:
            raise ValueError(
                f"server {load.server_id!r}: tier {load.tier!r} is not a known tier ({', '.join(self.tiers)})"
            )
        for field in ("running", "kv_tokens", "queued_prefill_tokens"):
            if getattr(load, field) < 0:
                raise ValueError(f"server {load.server_id!r}: {field} must be >= 0, got {getattr(load, field)!r}")
        old = self._servers.get(load.server_id)
        if old is not None:
            self._unbucket(load.server_id, old)
        costs = self._costs.get(id(load.model))
        if costs is None or costs.model is not load.model:
            costs = self._costs[id(load.model)] = costs_for(load.model)
        sid = load.server_id
        rank = self._rank.get(sid)
        if rank is None:
            rank = self._new_rank(sid)
        b = self._bins[load.tier]
        e = ServerEntry(load, costs, rank, b)
        self._servers[sid] = e
        self._by_rank[rank] = e
        if costs not in b.costs:
            b.costs.append(costs)
            b.level_memo = level_memo_for(b.costs, b.tpot_s, self.turnover, b.ttft_s * self.protected_slack)
            for m in self._idle_memo.values():
                m.clear()
        self._rebucket(sid, e)

    def _new_rank(self, sid: str) -> int:
        """A rank for a new id between its sorted neighbours' ranks; renumbers every
        known id (and re-keys the bins) only when there is no room left between them."""
        ids = self._ids
        i = bisect_left(ids, sid)
        lo = self._rank[ids[i - 1]] if i > 0 else 0
        if i == len(ids):
            r = lo + RANK_GAP
            if r < RANK_SPACE:
                ids.append(sid)
                self._rank[sid] = r
                return r
            hi = RANK_SPACE
        else:
            hi = self._rank[ids[i]]
        if hi - lo >= 2:
            r = (lo + hi) // 2
            ids.insert(i, sid)
            self._rank[sid] = r
            return r
        # No room: renumber the ids still in use, evenly spread, and re-key every bin.
        live = sorted(set(self._servers) | {sid})
        step = min(RANK_GAP, RANK_SPACE // (len(live) + 1))
        if step < 1:
            raise ValueError(f"too many servers ({len(live)}) for the routing policy's id ranks")
        self._ids = live
        self._rank = {x: (k + 1) * step for k, x in enumerate(live)}
        self._by_rank = {}
        new_keys: dict[str, list[int]] = {t: [] for t in self._bins}
        for x, e in self._servers.items():
            e.rank = self._rank[x]
            self._by_rank[e.rank] = e
            if e.key is not None:
                e.key = ((e.key >> KV_SHIFT) << KV_SHIFT) | e.rank
                new_keys[e.load.tier].append(e.key)
        for t, b in self._bins.items():
            b.keys = sorted(new_keys[t])
        return self._rank[sid]

    def remove_server(self, server_id: str) -> None:
        e = self._servers.pop(server_id, None)
        if e is not None:
            self._unbucket(server_id, e)

    def server(self, server_id: str) -> ServerLoad | None:
        e = self._servers.get(server_id)
        return e.load if e is not None else None

    def servers(self) -> list[ServerLoad]:
        return [e.load for e in self._servers.values()]

    def set_state(self, server_id: str, *, ready: bool | None = None, draining: bool | None = None) -> None:
        e = self._servers[server_id]
        if ready is not None:
            e.load.ready = ready
        if draining is not None:
            e.load.draining = draining
        self._rebucket(server_id, e)

    def on_admit(self, server_id: str, prompt_tokens: int, expected_output_tokens: int) -> None:
        e = self._servers.get(server_id)
        if e is None:
            return
        ld = e.load
        ld.running += 1
        ld.kv_tokens += prompt_tokens
        ld.queued_prefill_tokens += prompt_tokens
        self._rebucket(server_id, e)

    def on_prefill_done(self, server_id: str, prompt_tokens: int) -> None:
        e = self._servers.get(server_id)
        if e is None:
            return
        q = e.load.queued_prefill_tokens - prompt_tokens
        e.load.queued_prefill_tokens = q if q > 0 else 0

    def on_finish(self, server_id: str, prompt_tokens: int, output_tokens: int) -> None:
        e = self._servers.get(server_id)
        if e is None:
            return
        ld = e.load
        ld.running = ld.running - 1 if ld.running > 0 else 0
        kv = ld.kv_tokens - prompt_tokens - output_tokens
        ld.kv_tokens = kv if kv > 0 else 0
        if ld.running == 0:
            ld.queued_prefill_tokens = 0
            e.lag_s = 0.0
        self._rebucket(server_id, e)

    def observe(self, server_id: str, running: int, kv_tokens: int, queued_prefill_tokens: int) -> None:
        e = self._servers.get(server_id)
        if e is None:
            return
        ld = e.load
        e.lag_s = lag_after(e, running, kv_tokens, queued_prefill_tokens)
        ld.running = running if running > 0 else 0
        ld.kv_tokens = kv_tokens if kv_tokens > 0 else 0
        ld.queued_prefill_tokens = queued_prefill_tokens if queued_prefill_tokens > 0 else 0
        self._rebucket(server_id, e)

    def _rebucket(self, sid: str, e: ServerEntry) -> None:
        ld = e.load
        e.step = None  # running or KV may have changed
        if ld.ready and not ld.draining:
            kv = ld.kv_tokens
            key = (ld.running << RUN_SHIFT) | ((kv if kv <= KV_MASK else KV_MASK) << KV_SHIFT) | e.rank
            old = e.key
            if key == old:
                return
            b = e.bin
            keys = b.keys
            e.key = key
            if old is not None:
                i = bisect_left(keys, old)
                # Most updates move a server by a few tokens, past no neighbour: replace
                # its key in place instead of deleting and re-inserting it.
                if (i == 0 or keys[i - 1] < key) and (i + 1 == len(keys) or key < keys[i + 1]):
                    keys[i] = key
                    return
                del keys[i]
            insort(keys, key)
            if not e.in_order:
                b.order.append(sid)
                e.in_order = True
        elif e.key is not None:
            e.bin.discard(e)

    def _unbucket(self, sid: str, e: ServerEntry) -> None:
        b = self._bins[e.load.tier]
        if e.key is not None:
            b.discard(e)
        if e.in_order:
            b.order.remove(sid)
            e.in_order = False

    # ------------------------------------------------------------------ decisions
