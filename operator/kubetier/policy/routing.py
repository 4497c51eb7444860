"""PolyServe-style routing: SLO bins by TPOT, most-loaded-feasible, spill upward only.

The same code decides for the router (live traffic) and the fleet simulator (traces),
so it is pure: no clock (the caller passes how long the request has waited), no I/O,
randomness only through the ``rng`` argument (no rule draws today: ties go to the
server id that sorts last, so runs are reproducible).

Rules of kind ``"slo"`` (PolyServe, 2025), for a request of tier T:

1. **Own bin.** Servers of tier T, scanned from the most loaded (largest running batch)
   down; the first one that passes :func:`_feasible` wins. Piling load on
   the fullest feasible server drains the emptiest ones, which makes scale-in safe.
2. **Spill upward.** If no server of T is feasible, the servers of tiers with a strictly
   tighter TPOT (tiers with an equal TPOT do not share servers), nearest tighter first (keep the tightest capacity for last). A host
   server is judged against the *host's* TPOT, so the host's own requests stay
   protected; the request's own TTFT still applies. Never onto looser tiers.
   A spill must also leave the host tier able to use its own server: with the spilled
   prompt added to the host's queued prefill (and its sequence to the batch), a new
   host-tier request with a typical prompt (``host_probe_prompt_tokens``, default
   ``HOST_PROBE_PROMPT_TOKENS``) must still get its first token within the host's TTFT
   (same first-token estimate as below). Without this, long batch prompts spilled onto
   the interactive server queue their prefills there and the next interactive arrivals
   find no feasible server (observed in ``kubetier demo``: 429s during a batch burst).
3. **Wait** when no server is feasible but the request could still meet its TTFT once
   capacity frees or a scale-up lands (``scale_up_s``); ``retry_after_s`` then says how
   long it can wait before it is late. A "wait" is the demand signal for the tier.
4. **Late.** When even an idle server could no longer deliver the first token in time
   (waited + scale_up_s + prefill of the prompt > TTFT): tier ``on_late="reject"`` ->
   ``reject`` with ``retry_after_s``; ``on_late="queue"`` -> route ignoring the
   request's own TTFT (the TPOT and KV checks that protect others remain), else wait.

Feasibility of request (prompt P, tier T) on server S with host TPOT ``tpot`` (S's tier)
using S's latency model (D = decode iteration, chunks = chunked-prefill iterations):

* **capacity**: running + 1 <= maxNumSeqs and KV after the horizon fits:
  ``kv + P + (running + 1) * H <= kvCapacityTokens`` with H = T's meanOutputTokens.
* **first token**: waited + time to prefill S's queued prompt tokens plus P, in chunks of
  ``maxNumBatchedTokens - running`` next to the running batch, <= T's TTFT.
* **second token**: first token + D(running + 1, kv + P) <= TTFT + TPOT.
* **worst future iteration**: the per-token time over the request's life, with the batch
  grown to running + 1, the KV grown by H tokens per sequence, *and the prefill chunks
  the server will interleave*: its queued prompts, ours, and one prompt like ours for
  every running sequence (each finishes and is replaced once within the horizon, on
  average; ``turnover`` scales this, 0 reproduces the pitfall below). Each chunk costs what an iteration carrying it costs beyond a decode step:
  ``D(B', kv_end) + n_chunks * (P(chunk) - P(0)) / H <= tpot``.
  design.md measured the pitfall: leaving the prefill chunks out packs the tight tier
  until its attainment collapses to 2-5%. Spreading the chunks over the horizon (rather
  than demanding that a single prefill-carrying iteration fit TPOT) matches the
  deadline-based SLO (token i due by arrival + TTFT + i * TPOT), where slack from fast
  decode steps absorbs an occasional slow one.

Cost: the routable servers of a tier are kept sorted by (running batch, KV tokens, id),
each as one int with those three packed into bit fields (``_RUN_SHIFT``, ``_KV_SHIFT``;
the id enters as its rank in sorted-id order), so ``bisect`` compares plain ints. For a
(horizon, prompt class) the highest batch that could pass at all, and for each batch the
largest key a feasible server may have (the most KV it may hold), are memoised, so a
decision jumps to the most loaded candidate of each level instead of visiting servers
that are too full. These bounds are only pre-filters: every candidate gets the full
check (:func:`_feasible`, one flat function; capacity, then first token with per-server
cached decode-step terms, then TPOT), and a full scan in the same order returns the
same decision (tests/policy/test_routing_equivalence.py). Iteration costs are memoised
per model (KV rounded *up* to ``_KV_QUANTUM`` tokens: conservative); the memos are pure
functions of the model (and the level bounds of the bin's models, TPOT and turnover), so
every policy in the process shares them. ``max_checks`` full checks per decision (and
``max_checks_per_level``) bound the worst case, e.g. many servers with long prefill
queues; beyond it the answer is "wait".

Known inaccuracy (kept, it is the rule the simulator's results rest on): the
first-token estimate starts the queued prefill now and ignores the remainder of the
iteration already in flight on the server (up to one iteration, tens of ms, too
optimistic).

Baselines (the fleet simulator compares them): ``"least-loaded"`` (own bin, smallest
batch with room) and ``"round-robin"`` (own bin, next server with room); both ignore
the SLO checks, never spill, and wait/reject with the same lateness rule.
``"static-partition"`` is ``"least-loaded"`` under the name the literature uses (each
tier on its own servers, no spill). Tier-blind load balancers over the whole fleet:
``"pool-least-loaded"`` (join-shortest-queue: smallest batch, then least KV, over every
server) and ``"pool-round-robin"``. ``"two-class"``: the tightest-TPOT tier(s) are the
latency-sensitive class on their own servers; every other tier is best effort, pooled
(least loaded) over all the remaining servers.
"""

from __future__ import annotations

import random
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass
from typing import Literal

from kubetier.api.tier import SLOTier
from kubetier.policy.latency import LatencyModel

__all__ = ["HOST_PROBE_PROMPT_TOKENS", "KINDS", "Decision", "RoutingPolicy", "ServerLoad", "TierSLO"]

KINDS = ("slo", "least-loaded", "round-robin", "static-partition", "two-class", "pool-least-loaded", "pool-round-robin")

# KV tokens are rounded up to this many for the memoised decode cost: the decode table
# is linear in KV between grid points, so the error is under one quantum's worth of
# time (microseconds), and rounding up keeps it on the safe side.
_KV_QUANTUM = 512
# Memo tables are cleared when they grow past this many entries (bounded memory).
_MEMO_LIMIT = 200_000
_DEC_MEMO_MAX = 2_000_000  # the decode memo's bound (it holds a model's whole grid when it fits)
_SHARED_COSTS_MAX = 32  # latency models whose memos are kept across policy instances
_INF = float("inf")
# A bin orders its servers by one int per server, (running, KV, id rank) packed into
# bit fields, so bisect compares machine-size ints instead of tuples with strings.
# The id rank preserves the order of the server ids (ties go to the id sorting last);
# ranks are spread out so a new id usually fits between its neighbours without
# renumbering. KV beyond 2**32 - 1 tokens (far beyond any real cache) ties at the cap.
_RANK_BITS = 32
_KV_SHIFT = _RANK_BITS
_RUN_SHIFT = _RANK_BITS + 32
_RANK_MASK = (1 << _RANK_BITS) - 1
_KV_MASK = (1 << 32) - 1
_RANK_SPACE = 1 << _RANK_BITS
_RANK_GAP = 1 << 16  # spacing of ids appended in sorted order
# The prompt of the hypothetical next host-tier request a spill must leave room for (see
# rule 2). The policy keeps no per-tier prompt statistics; about a thousand tokens is
# taken as a typical chat prompt (a judgement, not measured here); a smaller probe
# protects the host less, a larger one refuses more spills.
HOST_PROBE_PROMPT_TOKENS = 1024


@dataclass(frozen=True)
class TierSLO:
    """The routing policy's view of an SLO tier: a plain frozen dataclass, read on every
    decision. The one definition of a tier, and its validation with field-naming
    messages, is ``kubetier.api.tier.SLOTier``; build this with :meth:`from_api` from
    anything that came from outside (a ModelService, a routing document, a config file,
    a scenario). ``__post_init__`` only guards direct construction in code against
    values the policy cannot work with."""

    name: str
    ttft_ms: float
    tpot_ms: float
    priority: int
    mean_output_tokens: int = 256
    on_late: Literal["reject", "queue"] = "reject"

    @classmethod
    def from_api(cls, tier: SLOTier) -> TierSLO:
        return cls(
            name=tier.name,
            ttft_ms=float(tier.ttft_ms),
            tpot_ms=float(tier.tpot_ms),
            priority=tier.priority,
            mean_output_tokens=tier.mean_output_tokens,
            on_late=tier.on_late,
        )

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("TierSLO.name must be non-empty")
        if not self.ttft_ms > 0:
            raise ValueError(f"tier {self.name!r}: ttft_ms must be > 0, got {self.ttft_ms!r}")
        if not self.tpot_ms > 0:
            raise ValueError(f"tier {self.name!r}: tpot_ms must be > 0, got {self.tpot_ms!r}")
        if self.mean_output_tokens < 1:
            raise ValueError(f"tier {self.name!r}: mean_output_tokens must be >= 1, got {self.mean_output_tokens!r}")
        if self.on_late not in ("reject", "queue"):
            raise ValueError(f"tier {self.name!r}: on_late must be 'reject' or 'queue', got {self.on_late!r}")


@dataclass(slots=True)
class ServerLoad:
    server_id: str
    tier: str
    model: LatencyModel
    ready: bool = True
    draining: bool = False
    running: int = 0  # sequences in the batch (admitted ones still prefilling included)
    kv_tokens: int = 0  # KV tokens held
    queued_prefill_tokens: int = 0  # prompt tokens admitted but not yet prefilled


@dataclass(frozen=True)
class Decision:
    action: Literal["route", "wait", "reject"]
    server_id: str | None
    spilled: bool = False
    reason: str = ""
    # reject: when to try again; wait: how long the request may still wait before it
    # can no longer meet its TTFT (0 when it is already late and its tier queues).
    retry_after_s: float | None = None


class _Costs:
    """Memoised iteration costs of one latency model (seconds)."""

    __slots__ = (
        "_dec",
        "_dec_limit",
        "_dvals",
        "_kv_grid",
        "_pre",
        "_prefill_s",
        "ce",
        "kv_cap",
        "max_seqs",
        "mbt",
        "model",
        "p0",
    )

    def __init__(self, model: LatencyModel) -> None:
        self.model = model
        self.mbt = model.max_num_batched_tokens
        self.max_seqs = model.max_num_seqs
        self.kv_cap = model.kv_capacity_tokens
        # An iteration carrying prompt tokens and no decode, with zero tokens: one weight read.
        self.p0 = model.decode_iteration_s(1, 0)
        self._dec: dict[int, float] = {}
        # Every (batch, KV quantum) a check can ask for fits, up to a bound: a memo that
        # is cleared while it is being filled would be refilled forever.
        self._dec_limit = min(_DEC_MEMO_MAX, max(_MEMO_LIMIT, (self.max_seqs + 2) * (self.kv_cap // _KV_QUANTUM + 2)))
        self._pre: dict[int, float] = {}
        self._prefill_s: dict[int, float] = {}
        # The decode table's KV grid: between its points the decode time is linear in KV,
        # which lets max_kv() invert it exactly.
        self._kv_grid: tuple[int, ...] = tuple(model.to_dict()["decode"]["kvTokens"])
        self._dvals: dict[int, tuple[float, ...]] = {}
        # chunk_extra(n) for 0 <= n <= maxNumBatchedTokens (every chunk a check sees),
        # filled on first use: a list index is cheaper than a dict lookup in the hot loop.
        self.ce: list[float | None] = [None] * (self.mbt + 1)

    def max_kv(self, batch: int, budget_s: float) -> float:
        """Largest KV with decode_iteration_s(batch, KV) <= budget_s (exact, unquantised);
        -1 if even an empty cache is too slow; inf if KV never gets there."""
        ds = self._dvals.get(batch)
        if ds is None:
            ds = self._dvals[batch] = tuple(self.model.decode_iteration_s(batch, k) for k in self._kv_grid)
        if ds[0] > budget_s:
            return -1.0
        ks = self._kv_grid
        j = bisect_right(ds, budget_s) - 1
        if j >= len(ks) - 1:
            j = len(ks) - 2  # beyond the grid the model extrapolates its last segment
        slope = (ds[j + 1] - ds[j]) / (ks[j + 1] - ks[j])
        if slope <= 0:
            return _INF if j == len(ks) - 2 else float(ks[j + 1])
        return ks[j] + (budget_s - ds[j]) / slope

    def decode(self, batch: int, kv: int) -> float:
        q = -(-kv // _KV_QUANTUM)
        key = (batch << 32) | q
        v = self._dec.get(key)
        if v is None:
            if len(self._dec) > self._dec_limit:
                self._dec.clear()
            v = self._dec[key] = self.model.decode_iteration_s(batch, q * _KV_QUANTUM)
        return v

    def chunk_extra(self, tokens: int) -> float:
        """What an iteration carrying ``tokens`` prompt tokens costs beyond a decode step."""
        if 0 <= tokens <= self.mbt:
            v = self.ce[tokens]
            if v is None:
                v = self.ce[tokens] = max(0.0, self.model.iteration_s(0, 0, tokens) - self.p0)
            return v
        v = self._pre.get(tokens)
        if v is None:
            if len(self._pre) > _MEMO_LIMIT:
                self._pre.clear()
            v = self._pre[tokens] = max(0.0, self.model.iteration_s(0, 0, tokens) - self.p0)
        return v

    def idle_prefill(self, tokens: int) -> float:
        v = self._prefill_s.get(tokens)
        if v is None:
            if len(self._prefill_s) > _MEMO_LIMIT:
                self._prefill_s.clear()
            v = self._prefill_s[tokens] = self.model.prefill_s(tokens)
        return v


# id(model) -> its memoised costs, shared by every RoutingPolicy of the process: they are
# pure functions of the (immutable) model, and a fleet simulator's goodput search or a
# router's config reload builds many policies over the same few models. Each _Costs
# holds its model, so an id in this table cannot be reused by another model.
_SHARED_COSTS: dict[int, _Costs] = {}


def _costs_for(model: LatencyModel) -> _Costs:
    c = _SHARED_COSTS.get(id(model))
    if c is None or c.model is not model:
        if len(_SHARED_COSTS) >= _SHARED_COSTS_MAX:
            _SHARED_COSTS.clear()
        c = _SHARED_COSTS[id(model)] = _Costs(model)
    return c


# (the bin's models, its TPOT, turnover) -> that bin's level memo (see _Bin.level_memo),
# shared the same way: the bounds are pure functions of this key. The key holds the
# _Costs objects themselves (identity hash), so it cannot match a later model.
_SHARED_LEVELS: dict[tuple, dict] = {}
_SHARED_LEVELS_MAX = 32  # each can hold thousands of level lists: keep few


def _level_memo_for(costs: list[_Costs], tpot_s: float, turnover: float) -> dict:
    key = (tuple(costs), tpot_s, turnover)
    m = _SHARED_LEVELS.get(key)
    if m is None:
        if len(_SHARED_LEVELS) >= _SHARED_LEVELS_MAX:
            _SHARED_LEVELS.clear()
        m = _SHARED_LEVELS[key] = {}
    return m


class _Entry:
    __slots__ = ("bin", "costs", "in_order", "key", "load", "rank", "routes", "step")

    def __init__(self, load: ServerLoad, costs: _Costs, rank: int, b: _Bin) -> None:
        self.load = load
        self.costs = costs
        self.bin = b  # the bin of load.tier (a server changes tier only through upsert_server)
        self.routes: tuple[Decision, Decision] | None = None  # its own-bin and spill decisions
        # (decode step now, prefill room next to the batch, cost of a full chunk): what
        # the first-token estimate needs from (running, kv); None after they change.
        self.step: tuple[float, int, float] | None = None
        self.key: int | None = None  # packed (running, kv, id rank) in its bin; None = not routable
        self.in_order = False  # listed in its bin's round-robin order
        self.rank = rank  # the id's position in sorted-id order (spread out, see _RANK_BITS)


class _Bin:
    """The routable servers of one tier, kept sorted by (running batch, KV tokens, id).

    The order is the load order: the most loaded server is last. A decision walks the
    running levels downward and, inside a level, jumps straight to the most loaded
    server whose KV is under that level's threshold, so servers that are too full are
    never visited one by one.
    """

    __slots__ = ("costs", "keys", "level_memo", "order", "rr_next", "tier", "tpot_s", "ttft_s")

    def __init__(self, tier: TierSLO) -> None:
        self.tier = tier
        self.tpot_s = tier.tpot_ms / 1000.0
        self.ttft_s = tier.ttft_ms / 1000.0
        self.keys: list[int] = []  # packed (running, kv, id rank), ascending
        self.order: list[str] = []  # routable server ids, for round-robin
        self.rr_next = 0
        self.costs: list[_Costs] = []  # the distinct latency models of its servers
        # (horizon << 16 | prompt class) -> [highest level that can hold a feasible
        # server, per level the largest key that passes the KV pre-filter (None until
        # first needed)]; replaced when the bin's models change (_level_memo_for).
        self.level_memo: dict[int, tuple[int, list[int | None]]] = {}

    def add(self, e: _Entry, key: int) -> None:
        insort(self.keys, key)
        e.key = key

    def discard(self, e: _Entry) -> None:
        keys = self.keys
        del keys[bisect_left(keys, e.key)]
        e.key = None


def _prompt_class(prompt: int) -> tuple[int, int]:
    """(class, lower bound): prompts grouped 8 per octave, bounded below (optimistic)."""
    if prompt < 16:
        return prompt, prompt
    e = prompt.bit_length() - 4
    top = prompt >> e  # 8..15
    return (e << 4) | top, top << e


def _first_token_s(c: _Costs, running: int, kv: int, pending: int) -> float:
    """First-token estimate: ``pending`` prompt tokens prefilled in chunks of
    ``maxNumBatchedTokens - running`` next to a batch of ``running`` holding ``kv``
    tokens. :func:`_feasible` inlines the same arithmetic (with a per-server cache of the
    decode-step terms); keep the two in step."""
    if pending <= 0:
        return 0.0
    d_now = c.decode(running, kv) if running else c.p0
    chunk = c.mbt - running
    n_full, rest = divmod(pending, chunk)
    t = n_full * (d_now + c.chunk_extra(chunk))
    if rest:
        t += d_now + c.chunk_extra(rest)
    return t


def _host_keeps_room(e: _Entry, prompt: int, host_ttft_s: float, probe_prompt: int) -> bool:
    """After spilling ``prompt`` onto ``e``, could a new host-tier request with a
    ``probe_prompt``-token prompt still meet the host's TTFT there? (rule 2)"""
    ld = e.load
    return (
        _first_token_s(e.costs, ld.running + 1, ld.kv_tokens + prompt, ld.queued_prefill_tokens + prompt + probe_prompt)
        <= host_ttft_s
    )


def _feasible(e: _Entry, prompt: int, H: int, ttft_budget_s: float, tpot_s: float, turnover: float) -> bool:
    """The full feasibility check of request (prompt, horizon H) on server ``e`` (see the
    module docstring): capacity, first token, second token, worst future iteration.

    One flat function with the memo lookups inlined: it runs for every candidate a
    decision visits, and most candidates of a busy fleet fail the first-token check, so
    that runs before the TPOT part (the result is the AND of all checks, order-free).
    RoutingPolicy._tpot_kv_ok is the same capacity/TPOT arithmetic (used for the
    pre-filter bounds); keep the two in step.
    """
    ld = e.load
    c = e.costs
    running = ld.running
    B = running + 1
    if c.max_seqs < B:
        return False
    kv = ld.kv_tokens
    kv_end = kv + prompt + B * H
    if kv_end > c.kv_cap:
        return False
    chunk_b = c.mbt - B
    if chunk_b < 1:
        return False
    queued = ld.queued_prefill_tokens
    dec = c._dec
    ce = c.ce
    t1 = 0.0
    if ttft_budget_s != _INF:
        # First token: queued prompts and ours, chunked next to the running batch.
        pending = queued + prompt
        if pending > 0:
            st = e.step
            if st is None:
                # A busy fleet visits the same servers decision after decision between
                # their updates (95% hits at 1,000 servers): cache what (running, kv) fix.
                if running:
                    d_now = dec.get((running << 32) | -(-kv // _KV_QUANTUM))
                    if d_now is None:
                        d_now = c.decode(running, kv)
                else:
                    d_now = c.p0
                chunk = c.mbt - running
                x = ce[chunk]
                if x is None:
                    x = c.chunk_extra(chunk)
                e.step = (d_now, chunk, x)
            else:
                d_now, chunk, x = st
            n_full, rest = divmod(pending, chunk)
            if rest:
                y = ce[rest]
                if y is None:
                    y = c.chunk_extra(rest)
                t1 = n_full * (d_now + x) + (d_now + y)
            else:
                t1 = n_full * (d_now + x) + 0.0
        if t1 > ttft_budget_s:
            return False
    per_token = dec.get((B << 32) | -(-kv_end // _KV_QUANTUM))
    if per_token is None:
        per_token = c.decode(B, kv_end)
    future_prefill = queued + prompt + int(running * prompt * turnover)
    if future_prefill > 0:
        size = prompt if 0 < prompt < chunk_b else chunk_b
        x = ce[size]
        if x is None:
            x = c.chunk_extra(size)
        per_token += -(-future_prefill // size) * x / H
    if per_token > tpot_s:
        return False
    if ttft_budget_s == _INF:
        return True  # a late request of a queueing tier: only others' TPOT matters
    # Second token, due TPOT after the first (the host's TPOT is never looser).
    kv2 = kv + prompt
    d2 = dec.get((B << 32) | -(-kv2 // _KV_QUANTUM))
    if d2 is None:
        d2 = c.decode(B, kv2)
    return t1 + d2 <= ttft_budget_s + tpot_s


class RoutingPolicy:
    """Routing decisions plus the load state they rest on (see the module docstring)."""

    def __init__(
        self,
        tiers: list[TierSLO],
        kind: str = "slo",
        rng: random.Random | None = None,
        *,
        scale_up_s: float = 0.0,
        reject_retry_after_s: float = 1.0,
        max_checks: int = 64,
        max_checks_per_level: int = 8,
        turnover: float = 1.0,
        rebin_idle: bool = False,
        host_probe_prompt_tokens: int = HOST_PROBE_PROMPT_TOKENS,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"routing kind {kind!r} is unknown (known: {', '.join(KINDS)})")
        if not tiers:
            raise ValueError("routing needs at least one tier")
        names = [t.name for t in tiers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tier names must be unique, repeated: {sorted(dup)}")
        if scale_up_s < 0 or reject_retry_after_s <= 0 or max_checks < 1 or turnover < 0:
            raise ValueError("scale_up_s >= 0, reject_retry_after_s > 0, max_checks >= 1, turnover >= 0 required")
        if host_probe_prompt_tokens < 0:
            raise ValueError(f"host_probe_prompt_tokens must be >= 0, got {host_probe_prompt_tokens!r}")
        self.host_probe_prompt_tokens = host_probe_prompt_tokens
        self.kind = kind
        self._pool_rr_next = 0  # "pool-round-robin" position over the whole fleet
        # Shared-pool mode (PolyServe's server reassignment): when no server of the
        # request's own or tighter bins is feasible, an idle server of another bin that
        # keeps at least one other idle server moves to the request's bin. The load
        # gradient (most-loaded-first) is what leaves servers idle to move.
        self.rebin_idle = rebin_idle
        self.rng = rng if rng is not None else random.Random(0)
        self.scale_up_s = scale_up_s
        self.reject_retry_after_s = reject_retry_after_s
        self.max_checks = max_checks
        self.max_checks_per_level = max(1, max_checks_per_level)
        self.turnover = turnover
        self.tiers: dict[str, TierSLO] = {t.name: t for t in tiers}
        self._bins: dict[str, _Bin] = {t.name: _Bin(t) for t in tiers}
        # For each tier: the bins a request may use, own first, then strictly tighter
        # TPOT tiers from the nearest to the tightest.
        self._route_bins: dict[str, list[_Bin]] = {}
        for t in tiers:
            tighter = sorted(
                (u for u in tiers if u.tpot_ms < t.tpot_ms), key=lambda u: (-u.tpot_ms, -u.priority, u.name)
            )
            self._route_bins[t.name] = [self._bins[t.name]] + [self._bins[u.name] for u in tighter]
        # tier -> (TierSLO, TTFT in seconds): one lookup per decision
        self._tier_ttft: dict[str, tuple[TierSLO, float]] = {t.name: (t, t.ttft_ms / 1000.0) for t in tiers}
        self._servers: dict[str, _Entry] = {}
        # Server ids in sorted order with their ranks (see _RANK_BITS); rank -> entry.
        # Ids of removed servers keep their rank until the next renumbering.
        self._ids: list[str] = []
        self._rank: dict[str, int] = {}
        self._by_rank: dict[int, _Entry] = {}
        self._costs: dict[int, _Costs] = {}  # id(model) -> memo (models are few and long-lived)
        # Decisions are immutable: one object per (server, reason) instead of one per call.
        self._route_cache: dict[tuple[str, str], Decision] = {}
        # tier -> {prompt tokens: fastest idle-server prefill}; cleared when models change
        self._idle_memo: dict[str, dict[int, float]] = {t.name: {} for t in tiers}

    # ------------------------------------------------------------------ load state

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
            costs = self._costs[id(load.model)] = _costs_for(load.model)
        sid = load.server_id
        rank = self._rank.get(sid)
        if rank is None:
            rank = self._new_rank(sid)
        b = self._bins[load.tier]
        e = _Entry(load, costs, rank, b)
        self._servers[sid] = e
        self._by_rank[rank] = e
        if costs not in b.costs:
            b.costs.append(costs)
            b.level_memo = _level_memo_for(b.costs, b.tpot_s, self.turnover)
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
            r = lo + _RANK_GAP
            if r < _RANK_SPACE:
                ids.append(sid)
                self._rank[sid] = r
                return r
            hi = _RANK_SPACE
        else:
            hi = self._rank[ids[i]]
        if hi - lo >= 2:
            r = (lo + hi) // 2
            ids.insert(i, sid)
            self._rank[sid] = r
            return r
        # No room: renumber the ids still in use, evenly spread, and re-key every bin.
        live = sorted(set(self._servers) | {sid})
        step = min(_RANK_GAP, _RANK_SPACE // (len(live) + 1))
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
                e.key = ((e.key >> _KV_SHIFT) << _KV_SHIFT) | e.rank
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
        self._rebucket(server_id, e)

    def observe(self, server_id: str, running: int, kv_tokens: int, queued_prefill_tokens: int) -> None:
        e = self._servers.get(server_id)
        if e is None:
            return
        ld = e.load
        ld.running = running if running > 0 else 0
        ld.kv_tokens = kv_tokens if kv_tokens > 0 else 0
        ld.queued_prefill_tokens = queued_prefill_tokens if queued_prefill_tokens > 0 else 0
        self._rebucket(server_id, e)

    def _rebucket(self, sid: str, e: _Entry) -> None:
        ld = e.load
        e.step = None  # running or KV may have changed
        if ld.ready and not ld.draining:
            kv = ld.kv_tokens
            key = (ld.running << _RUN_SHIFT) | ((kv if kv <= _KV_MASK else _KV_MASK) << _KV_SHIFT) | e.rank
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

    def _unbucket(self, sid: str, e: _Entry) -> None:
        b = self._bins[e.load.tier]
        if e.key is not None:
            b.discard(e)
        if e.in_order:
            b.order.remove(sid)
            e.in_order = False

    # ------------------------------------------------------------------ decisions

    def decide(self, tier: str, prompt_tokens: int, waited_s: float) -> Decision:
        tt = self._tier_ttft.get(tier)
        if tt is None:
            raise ValueError(f"tier {tier!r} is not a known tier ({', '.join(self.tiers)})")
        if prompt_tokens < 0:
            raise ValueError(f"prompt_tokens must be >= 0, got {prompt_tokens}")
        t, ttft_s = tt
        idle = self._idle_memo[tier].get(prompt_tokens)
        if idle is None:
            idle = self._idle_prefill(t, prompt_tokens)
        late = waited_s + self.scale_up_s + idle > ttft_s  # the rule of _is_late, inlined
        if late and t.on_late == "reject":
            return Decision("reject", None, reason="ttft-unreachable", retry_after_s=self.reject_retry_after_s)
        if self.kind == "slo":
            # A late request of a queueing tier only needs to leave others unharmed.
            budget = _INF if late else ttft_s - waited_s
            d = self._decide_slo(t, prompt_tokens, budget)
            if d is None and self.rebin_idle:
                d = self._rebin_idle_server(t, prompt_tokens, budget)
        elif self.kind == "least-loaded" or self.kind == "static-partition":
            d = self._decide_least_loaded(t, prompt_tokens)
        elif self.kind == "round-robin":
            d = self._decide_round_robin(t, prompt_tokens)
        else:
            d = self._decide_baseline_pool(t, prompt_tokens)
        if d is not None:
            return d
        if late:
            return Decision("wait", None, reason="late-queued", retry_after_s=0.0)
        return Decision(
            "wait", None, reason="no-feasible-server", retry_after_s=self._wait_budget(t, prompt_tokens, waited_s)
        )

    def _route(self, sid: str, reason: str) -> Decision:
        d = self._route_cache.get((sid, reason))
        if d is None:
            if len(self._route_cache) > _MEMO_LIMIT:
                self._route_cache.clear()
            d = self._route_cache[(sid, reason)] = Decision("route", sid, spilled=reason == "spill", reason=reason)
        return d

    def _idle_prefill(self, t: TierSLO, prompt_tokens: int) -> float:
        """Fastest possible first token: the prompt alone on an idle server of the
        fastest model among the bins the request may use (any known model if none)."""
        memo = self._idle_memo[t.name]
        v = memo.get(prompt_tokens)
        if v is None:
            if len(memo) > _MEMO_LIMIT:
                memo.clear()
            v = memo[prompt_tokens] = self._idle_prefill_uncached(t, prompt_tokens)
        return v

    def _idle_prefill_uncached(self, t: TierSLO, prompt_tokens: int) -> float:
        best = _INF
        for b in self._route_bins[t.name]:
            for c in b.costs:
                v = c.idle_prefill(prompt_tokens)
                if v < best:
                    best = v
        if best == _INF:
            for c in self._costs.values():
                v = c.idle_prefill(prompt_tokens)
                if v < best:
                    best = v
        return best if best != _INF else 0.0

    def _is_late(self, t: TierSLO, prompt_tokens: int, waited_s: float) -> bool:
        return waited_s + self.scale_up_s + self._idle_prefill(t, prompt_tokens) > t.ttft_ms / 1000.0

    def _wait_budget(self, t: TierSLO, prompt_tokens: int, waited_s: float) -> float:
        return max(0.0, t.ttft_ms / 1000.0 - waited_s - self.scale_up_s - self._idle_prefill(t, prompt_tokens))

    def _decide_slo(self, t: TierSLO, prompt: int, ttft_budget_s: float) -> Decision | None:
        checks = self.max_checks
        per_level = self.max_checks_per_level
        turnover = self.turnover
        by_rank = self._by_rank
        own = True
        H = t.mean_output_tokens
        probe = self.host_probe_prompt_tokens
        pc, p_lb = _prompt_class(prompt)
        memo_key = (H << 16) | pc
        for b in self._route_bins[t.name]:
            keys = b.keys
            if not keys:
                own = False
                continue
            tpot_s = b.tpot_s
            lm = b.level_memo.get(memo_key)
            if lm is None:
                if len(b.level_memo) > _MEMO_LIMIT:
                    b.level_memo.clear()
                cap = self._level_bound(b, H, p_lb, tpot_s)
                lm = b.level_memo[memo_key] = (cap, [None] * (cap + 1) if cap >= 0 else [])
            cap, thresholds = lm
            hi = bisect_left(keys, (cap + 1) << _RUN_SHIFT)  # keys[:hi] have running <= cap
            while hi > 0:
                k = keys[hi - 1]
                level = k >> _RUN_SHIFT
                thr = thresholds[level]
                if thr is None:
                    thr = thresholds[level] = self._level_threshold(b, level, H, p_lb, tpot_s)
                if k <= thr:
                    j = hi  # the most loaded server of the level passes the pre-filter
                else:
                    j = bisect_right(keys, thr, 0, hi)
                    if j == 0 or keys[j - 1] >> _RUN_SHIFT != level:
                        hi = j  # no candidate at this level: on to the next lower one
                        continue
                n = per_level
                while True:
                    j -= 1
                    e = by_rank[keys[j] & _RANK_MASK]
                    if _feasible(e, prompt, H, ttft_budget_s, tpot_s, turnover) and (
                        own or _host_keeps_room(e, prompt, b.ttft_s, probe)
                    ):
                        routes = e.routes
                        if routes is None:
                            sid = e.load.server_id
                            routes = e.routes = (
                                Decision("route", sid, spilled=False, reason="own-bin"),
                                Decision("route", sid, spilled=True, reason="spill"),
                            )
                        return routes[0] if own else routes[1]
                    checks -= 1
                    if checks <= 0:
                        return None
                    n -= 1
                    if n <= 0:
                        hi = bisect_left(keys, level << _RUN_SHIFT, 0, j)  # skip the rest of the level
                        break
                    if j == 0 or keys[j - 1] >> _RUN_SHIFT != level:
                        hi = j
                        break
            own = False
        return None

    def _level_threshold(self, b: _Bin, level: int, H: int, prompt: int, tpot_s: float) -> int:
        """The largest packed key of this level that passes the KV pre-filter
        (:meth:`_kv_bound`); below the level's first key when none can."""
        kv_max = self._kv_bound(b, level, H, prompt, tpot_s)
        if kv_max < 0:
            return (level << _RUN_SHIFT) - 1
        kv = _KV_MASK if kv_max >= _KV_MASK else int(kv_max)  # kv <= kv_max  <=>  kv <= floor(kv_max)
        return (level << _RUN_SHIFT) | (kv << _KV_SHIFT) | _RANK_MASK

    def _level_bound(self, b: _Bin, H: int, prompt: int, tpot_s: float) -> int:
        """Highest running batch at which some server of the bin could pass the TPOT and
        KV checks (empty cache, nothing queued, prompt rounded down): levels above it
        cannot hold a feasible server. The check is monotone in the batch: binary search."""
        best = -1
        for c in b.costs:
            lo, hi = -1, c.max_seqs - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._tpot_kv_ok(c, mid, 0, 0, prompt, H, tpot_s):
                    lo = mid
                else:
                    hi = mid - 1
            best = max(best, lo)
        return best

    def _kv_bound(self, b: _Bin, running: int, H: int, prompt: int, tpot_s: float) -> float:
        """Most KV a server at this batch may hold and still pass the TPOT and KV checks
        (nothing queued, prompt rounded down); -1 if none. The TPOT check solved for KV:
        D(B, kv + P + B*H) <= tpot - prefill share, with D linear in KV between grid
        points. Only a pre-filter: the full check runs on the candidate it selects."""
        best = -1.0
        B = running + 1
        for c in b.costs:
            chunk_b = c.mbt - B
            if c.max_seqs < B or chunk_b < 1:
                continue
            budget = tpot_s
            future_prefill = prompt + int(running * prompt * self.turnover)
            if future_prefill > 0:
                size = prompt if 0 < prompt < chunk_b else chunk_b
                budget -= -(-future_prefill // size) * c.chunk_extra(size) / H
            grow = prompt + B * H
            kv = min(c.max_kv(B, budget) - grow, c.kv_cap - grow)
            if kv >= 0:
                best = max(best, kv + _KV_QUANTUM)  # the full check rounds KV up to a quantum
        return best

    def _tpot_kv_ok(self, c: _Costs, running: int, kv: int, queued: int, prompt: int, H: int, tpot_s: float) -> bool:
        """Capacity and the worst-future-iteration check (see the module docstring)."""
        B = running + 1
        if c.max_seqs < B:
            return False
        kv_end = kv + prompt + B * H
        if kv_end > c.kv_cap:
            return False
        chunk_b = c.mbt - B
        if chunk_b < 1:
            return False
        per_token = c.decode(B, kv_end)
        future_prefill = queued + prompt + int(running * prompt * self.turnover)
        if future_prefill > 0:
            size = prompt if 0 < prompt < chunk_b else chunk_b
            per_token += -(-future_prefill // size) * c.chunk_extra(size) / H
        return per_token <= tpot_s

    def _has_room(self, e: _Entry, prompt: int, H: int) -> bool:
        ld = e.load
        c = e.costs
        return ld.running + 1 <= c.max_seqs and ld.kv_tokens + prompt + H <= c.kv_cap

    def _decide_least_loaded(self, t: TierSLO, prompt: int) -> Decision | None:
        keys = self._bins[t.name].keys
        H = t.mean_output_tokens
        for k in range(min(len(keys), self.max_checks)):
            e = self._by_rank[keys[k] & _RANK_MASK]
            if self._has_room(e, prompt, H):
                return self._route(e.load.server_id, "least-loaded")
        return None

    def _rebin_idle_server(self, t: TierSLO, prompt: int, ttft_budget_s: float) -> Decision | None:
        own = self._bins[t.name]
        best, best_idle = None, 1
        for b in self._bins.values():
            if b is own:
                continue
            idle = bisect_left(b.keys, 1 << _KV_SHIFT)  # running 0 and no KV held
            if idle > best_idle or (
                idle == best_idle and best is not None and idle > 1 and b.tier.tpot_ms > best.tier.tpot_ms
            ):
                best, best_idle = b, idle
        if best is None:
            return None
        sid = self._by_rank[best.keys[0] & _RANK_MASK].load.server_id
        e = self._servers[sid]
        if e.load.queued_prefill_tokens:
            return None
        ld = e.load
        self.remove_server(sid)
        ld.tier = t.name
        self.upsert_server(ld)
        e = self._servers[sid]
        if not _feasible(e, prompt, t.mean_output_tokens, ttft_budget_s, t.tpot_ms / 1000.0, self.turnover):
            return None
        return self._route(sid, "rebin")

    def _pool_bins(self, t: TierSLO) -> list[_Bin]:
        """The bins a tier-blind or two-class baseline request may use."""
        if self.kind != "two-class":
            return list(self._bins.values())
        tightest = min(u.tpot_ms for u in self.tiers.values())
        if t.tpot_ms == tightest:
            return [b for b in self._bins.values() if b.tier.tpot_ms == tightest]
        rest = [b for b in self._bins.values() if b.tier.tpot_ms != tightest]
        return rest or [self._bins[t.name]]

    def _decide_baseline_pool(self, t: TierSLO, prompt: int) -> Decision | None:
        H = t.mean_output_tokens
        bins = self._pool_bins(t)
        if self.kind == "pool-round-robin":
            order = [sid for b in bins for sid in b.order]
            n = len(order)
            if n == 0:
                return None
            start = self._pool_rr_next % n
            for k in range(min(n, self.max_checks)):
                sid = order[(start + k) % n]
                e = self._servers[sid]
                if e.key is not None and self._has_room(e, prompt, H):
                    self._pool_rr_next = (start + k + 1) % n
                    return self._route(sid, "round-robin")
            return None
        best = None  # least loaded (running, kv) with room across the bins
        for b in bins:
            keys = b.keys
            for k in range(min(len(keys), self.max_checks)):
                key = keys[k]
                if best is not None and key >= best:
                    break
                if self._has_room(self._by_rank[key & _RANK_MASK], prompt, H):
                    best = key
                    break
        return (
            self._route(self._by_rank[best & _RANK_MASK].load.server_id, "least-loaded") if best is not None else None
        )

    def _decide_round_robin(self, t: TierSLO, prompt: int) -> Decision | None:
        b = self._bins[t.name]
        n = len(b.order)
        if n == 0:
            return None
        start = b.rr_next % n
        for k in range(min(n, self.max_checks)):
            sid = b.order[(start + k) % n]
            e = self._servers[sid]
            if e.key is not None and self._has_room(e, prompt, t.mean_output_tokens):
                b.rr_next = (start + k + 1) % n
                return self._route(sid, "round-robin")
        return None
