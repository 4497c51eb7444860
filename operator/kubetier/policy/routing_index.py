"""The server index of the routing policy: every server's load, kept in load order per tier.

Each tier's routable servers (ready, not draining) form a bin, kept sorted by
(running batch, KV tokens, id) as one packed int per server (``RUN_SHIFT``,
``KV_SHIFT``; the id enters as its rank in sorted-id order), so ``bisect`` compares
plain ints and the most loaded server is last. State changes (admit, prefill done,
finish, a scrape's observation, readiness) move one key; most move a server by a few
tokens past no neighbour and replace its key in place.
"""

from __future__ import annotations

import bisect as _bisect
import os
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from kubetier.policy.routing_costs import IterationCosts, costs_for, level_memo_for

if TYPE_CHECKING:
    from kubetier.policy.routing import Decision, ServerLoad, TierSLO

# ServerLag charges the decoding sequences for the prompt chunks' attention to their
# own earlier chunks too (IterationCosts.context_s), not only the chunks' extra cost
# (ServerLag._context_charge_s). Off by default: it removes generated seed 9009's loss
# (0.42x -> 1.19x the best baseline) but on held-out seeds 10000-10029 it was worse
# (geomean 1.490 -> 1.473, 1 better / 3 worse; kubetier/sim/README.md "Long prefills").
# $KUBETIER_LAG_CONTEXT=1 turns it on, for side-by-side runs.
LAG_CONTEXT = os.environ.get("KUBETIER_LAG_CONTEXT", "0") != "0"

# Final: the compiled simulator calls them from C statics, not a module-dict lookup per call
bisect_left: Final = _bisect.bisect_left
insort: Final = _bisect.insort

__all__ = ["KV_MASK", "KV_SHIFT", "RANK_MASK", "RUN_SHIFT", "Bin", "ServerEntry", "ServerIndex", "ServerLag"]

# A bin orders its servers by one int per server, (running, KV, id rank) packed into
# bit fields, so bisect compares machine-size ints instead of tuples with strings.
# The id rank preserves the order of the server ids (ties go to the id sorting last);
# ranks are spread out so a new id usually fits between its neighbours without
# renumbering. KV beyond 2**26 - 1 tokens (67M: over 100x the largest shipped profile's
# cache, 476k) ties at the cap. The fields fit 62 bits while running < 2**14, so the
# compiled simulator (kubetier.sim.native) keeps every key an unboxed machine int (a
# key of 64+ bits made each shift, mask and compare of the scan a bignum operation);
# a larger running batch still orders correctly, only as a longer int.
RANK_BITS: Final = 22  # 4M ranks: ids appended in order 1,024 apart, renumbered when full
KV_BITS: Final = 26
KV_SHIFT: Final = RANK_BITS
RUN_SHIFT: Final = RANK_BITS + KV_BITS
RANK_MASK: Final = (1 << RANK_BITS) - 1
KV_MASK: Final = (1 << KV_BITS) - 1
RANK_SPACE: Final = 1 << RANK_BITS
RANK_GAP: Final = 1 << 10  # spacing of ids appended in sorted order


class ServerEntry:
    __slots__ = (
        "bin",
        "chunk",
        "costs",
        "ctx_q",
        "d_now",
        "floor_s",
        "in_order",
        "key",
        "lag",
        "lag_prefilled",
        "lag_s",
        "lead",
        "load",
        "rank",
        "routes",
        "stepped",
        "x_full",
    )

    def __init__(self, load: ServerLoad, costs: IterationCosts, rank: int, b: Bin) -> None:
        self.load = load
        self.costs = costs
        self.bin = b  # the bin of load.tier (a server changes tier only through upsert_server)
        self.routes: tuple[Decision, Decision] | None = None  # its own-bin and spill decisions
        # What the first-token estimate needs from (running, kv, queued), unscaled
        # (routing_feasibility.server_step), valid while ``stepped``: the decode step
        # now, the prefill room next to the batch, a full chunk's extra cost, the
        # in-flight iteration's remainder, the queued prompts' context cost, the
        # first-token floor. Plain attributes, not a
        # tuple: the compiled simulator keeps them unboxed.
        self.stepped = False
        self.d_now = 0.0
        self.chunk = 0
        self.x_full = 0.0
        self.lead = 0.0
        self.ctx_q = 0.0
        self.floor_s = 0.0
        self.key: int | None = None  # packed (running, kv, id rank) in its bin; None = not routable
        self.in_order = False  # listed in its bin's round-robin order
        self.rank = rank  # the id's position in sorted-id order (spread out, see RANK_BITS)
        # Seconds the server's running sequences are behind their per-token deadlines
        # from the prefill chunks it already ran (estimated from its load reports, see
        # ServerLag): the burst check adds the pending chunks' lag to it.
        self.lag_s = 0.0
        self.lag = ServerLag()
        # prompt tokens whose first token the router saw since the last load report
        # (on_prefill_done): charged with the report's iteration count
        self.lag_prefilled = 0


class ServerLag:
    """How far a server's decoding sequences are behind their per-token deadlines, from
    the chunks that ran next to them (the burst check adds the pending chunks' lag).

    One cumulative clock ``c`` for the server: every prompt token prefilled while
    sequences decode adds a chunk's extra cost per token (:meth:`charge`), every
    iteration gives each decoding sequence a token and so gives back ``TPOT - decode
    step``. All decoding sequences see the same iterations, so a sequence that started
    decoding when the clock read ``base`` is ``c - base`` behind (negative: ahead, the
    slack fast steps banked, which is real: token k is due at arrival + TTFT + (k-1) x
    TPOT). The worst is the one that joined at the lowest reading: a sliding-window
    minimum over the decoding sequences (``mins``: (base, join index), bases increasing),
    sequences leaving oldest first, as in FCFS engines. Admitted prompts wait in
    ``pending`` (tokens left, in admission order) and join when prefilled, so a
    sequence is never charged for its own prompt or for the chunks that ran before its
    first token (its TTFT check covers those).

    Before (one number per server, raised by chunks, lowered only by decode steps,
    floored at zero): on small fleets with long prompts it charged lag to sequences
    that had banked seconds of slack or whose carriers had finished, refused servers
    whose running sequences were on time, and the requests waited past their TTFT
    (generated seeds 2004 and 2005: 2.38x and 1.68x the best baseline -> 1.00x and
    1.41x; kubetier/sim/README.md). O(1) amortised per event."""

    __slots__ = ("c", "joined", "left", "mins", "pending", "sizes")

    def __init__(self) -> None:
        self.c = 0.0
        self.mins: deque[tuple[float, int]] = deque()
        self.pending: deque[int] = deque()
        self.sizes: deque[int] = deque()  # each pending prompt's full length (LAG_CONTEXT)
        self.joined = 0  # sequences that started decoding, ever (their join indices)
        self.left = 0  # of those, how many finished (the oldest first)

    def lag_s(self) -> float:
        """The worst decoding sequence's lag; negative when every one of them is ahead
        of its deadlines (slack banked by decode steps faster than the TPOT, which a
        burst may spend); 0 with none decoding."""
        m = self.mins
        if not m:
            return 0.0
        return self.c - m[0][0]

    def decoding(self) -> int:
        return self.joined - self.left

    def admit(self, prompt_tokens: int) -> None:
        self.pending.append(prompt_tokens)
        self.sizes.append(prompt_tokens)

    def _context_charge_s(self, c: IterationCosts, prefilled: int) -> float:
        """Unscaled attention time of the next ``prefilled`` prompt tokens (in admission
        order) to the earlier chunks of their own prompts: what the chunk iterations cost
        beyond :meth:`IterationCosts.chunk_extra`, and so what the decoding sequences
        beside them also fall behind by. On llama-3.1-8b-a100 it is 0.20 s for a 12k-token
        prompt and 5.8 s for a 60k one (more than its 4.2 s of chunk extras); without it
        the lag of a server prefilling long prompts is under-counted (generated seed
        9009, kubetier/sim/README.md "Long prefills")."""
        t = 0.0
        for left, size in zip(self.pending, self.sizes):
            if prefilled <= 0:
                break
            k = left if left < prefilled else prefilled
            done = size - left
            t += c.context_s(done + k) - c.context_s(done)
            prefilled -= k
        return t

    def charge(self, e: ServerEntry, prefilled: int, iterations: float, running: int, kv_tokens: int) -> None:
        """``prefilled`` prompt tokens and ``iterations`` iterations ran at batch
        ``running`` holding ``kv_tokens``: the decoding sequences fall behind by the
        chunks' extra cost and get ``TPOT - decode step`` back per iteration; then the
        prompts whose prefill is complete start decoding, at the clock's new reading."""
        if self.joined > self.left:
            c = e.costs
            dt = 0.0
            chunk = c.mbt - running
            if prefilled > 0 and chunk >= 1:
                dt += prefilled * c.chunk_extra(chunk) / chunk
                if LAG_CONTEXT:
                    dt += self._context_charge_s(c, prefilled)
            if iterations > 0.0:
                dt -= iterations * (e.bin.tpot_s / c.scale - c.decode(running, kv_tokens))
            self.c += dt * c.scale
        pend = self.pending
        while prefilled > 0 and pend:
            head = pend[0]
            if head > prefilled:
                pend[0] = head - prefilled
                break
            prefilled -= head
            pend.popleft()
            if self.sizes:
                self.sizes.popleft()
            self._join()
        while pend and pend[0] <= 0:  # empty prompts decode at once
            pend.popleft()
            if self.sizes:
                self.sizes.popleft()
            self._join()

    def _join(self) -> None:
        m = self.mins
        b = self.c
        while m and m[-1][0] >= b:
            m.pop()  # never the minimum again: this one is younger and no higher
        m.append((b, self.joined))
        self.joined += 1

    def leave(self, n: int) -> None:
        """``n`` sequences finished: decoding ones, oldest first; beyond those, prompts
        that never got a token (cancelled or rejected by the engine)."""
        dec = self.joined - self.left
        k = n if n < dec else dec
        self.left += k
        m = self.mins
        while m and m[0][1] < self.left:
            m.popleft()
        for _ in range(n - k):
            if not self.pending:
                break
            self.pending.pop()
            if self.sizes:
                self.sizes.pop()

    def sync(self, running: int, queued: int) -> None:
        """Sequences the engine reports beyond those seen admitted (a server's load
        when first listed, another router's requests): one prompt of the queued tokens
        not accounted for, the rest decoding from now."""
        extra = running - (self.joined - self.left) - len(self.pending)
        if extra <= 0:
            return
        if queued > 0 and not self.pending:
            self.pending.append(queued)
            self.sizes.append(queued)
            extra -= 1
        for _ in range(extra):
            self._join()

    def reset(self) -> None:
        self.c = 0.0
        self.mins.clear()
        self.pending.clear()
        self.sizes.clear()
        self.joined = self.left = 0


def lag_after(e: ServerEntry, running: int, kv_tokens: int, queued: int, iterations: int | None) -> None:
    """Update ``e``'s lag from a load report (running, kv, queued[, iterations]) by what
    changed since its last one: sequences that finished leave (oldest first), the prompt
    tokens prefilled since (queued fell by them) and the iterations run
    (:meth:`ServerLag.charge`). Without an iteration count (an engine that exports
    none), iterations = tokens decoded / decoding sequences, tokens decoded = committed
    KV growth plus what finished sequences released (their mean KV each). The prompts
    whose first token the router saw since the last report (``on_prefill_done``, its
    queue already down by them) count as prefilled in this report, with its iterations,
    so the router's policy reaches the simulator's lag at every report; between reports
    it is not raised by guesses of how many iterations ran.

    Without the lag the burst check saw only the chunks still queued: under
    most-loaded packing the queue of a filling server is refilled by every arrival,
    its chunks run back to back (51 ms iterations against a 25 ms TPOT) and each new
    check allowed one more burst's lag (1,000-server bench from an empty fleet,
    interactive tier at 86%)."""
    ld = e.load
    lag = e.lag
    relayed = e.lag_prefilled
    e.lag_prefilled = 0
    if running <= 0:
        lag.reset()
        e.lag_s = 0.0
        return
    finished = ld.running - running
    prefilled = ld.queued_prefill_tokens - queued
    prefilled = (prefilled if prefilled > 0 else 0) + relayed
    if iterations is None:
        dec = lag.decoding()
        decoded = kv_tokens - ld.kv_tokens
        if finished > 0 and ld.running > 0:
            decoded += finished * ld.kv_tokens // ld.running
        iters = decoded / dec if dec > 0 and decoded > 0 else 0.0
    else:
        iters = float(iterations)
    lag.charge(e, prefilled, iters, running, kv_tokens)
    if finished > 0:
        lag.leave(finished)
    lag.sync(running, queued)
    e.lag_s = lag.lag_s()


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
    track_lag: bool
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
        if self.track_lag:
            e.lag.sync(load.running, load.queued_prefill_tokens)
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
        if self.track_lag:
            e.lag.admit(prompt_tokens)
        self._rebucket(server_id, e)

    def on_prefill_done(self, server_id: str, prompt_tokens: int) -> None:
        """The prompt's first token came out (the router sees it in the stream it
        relays): its chunks ran next to the decoding sequences. They are charged at the
        next load report, with the iterations the engine counted (:func:`lag_after`),
        as a report whose queue fell by the same tokens charges them (the fleet
        simulator's path)."""
        e = self._servers.get(server_id)
        if e is None:
            return
        ld = e.load
        q = ld.queued_prefill_tokens
        done = prompt_tokens if prompt_tokens < q else q
        if done > 0 and self.track_lag:
            e.lag_prefilled += done
        ld.queued_prefill_tokens = q - done
        e.stepped = False  # its queued part changed

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
        if self.track_lag:
            if ld.running == 0:
                e.lag.reset()
                e.lag_prefilled = 0
            else:
                e.lag.leave(1)
            e.lag_s = e.lag.lag_s()
        self._rebucket(server_id, e)

    def observe(
        self, server_id: str, running: int, kv_tokens: int, queued_prefill_tokens: int, iterations: int | None = None
    ) -> None:
        """A load report: the engine's (running + waiting, KV tokens, prompt tokens not
        yet prefilled) and, when it exports one, how many iterations it ran since the
        last report (the lag's give-back; :func:`lag_after`)."""
        e = self._servers.get(server_id)
        if e is None:
            return
        ld = e.load
        if self.track_lag:
            lag_after(e, running, kv_tokens, queued_prefill_tokens, iterations)
        ld.running = running if running > 0 else 0
        ld.kv_tokens = kv_tokens if kv_tokens > 0 else 0
        ld.queued_prefill_tokens = queued_prefill_tokens if queued_prefill_tokens > 0 else 0
        self._rebucket(server_id, e)

    def _rebucket(self, sid: str, e: ServerEntry) -> None:
        ld = e.load
        e.stepped = False  # running or KV may have changed
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
