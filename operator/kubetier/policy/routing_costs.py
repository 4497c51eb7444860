"""Memoised iteration costs of one latency model, shared by every routing policy.

A routing decision asks for the same few iteration costs thousands of times (decode
step of a batch at a KV size, the extra cost of a prefill chunk); these tables answer
from memory. They are pure functions of the (immutable) model, so every policy of the
process shares one table per model. A learned latency correction
(:class:`kubetier.policy.latency_learning.LatencyCorrection`) scales what they return:
``dec_scale`` for decode steps and ``pre_scale`` for prompt chunks; the tables hold the
profile's own values and the scale is applied where a check uses them.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Final

from kubetier.policy.latency import LatencyModel

__all__ = ["INF", "KV_QUANTUM", "MEMO_LIMIT", "IterationCosts", "costs_for", "level_memo_for", "prompt_class"]

# KV tokens are rounded up to this many for the memoised decode cost: the decode table
# is linear in KV between grid points, so the error is under one quantum's worth of
# time (microseconds), and rounding up keeps it on the safe side.
KV_QUANTUM: Final = 512
# Memo tables are cleared when they grow past this many entries (bounded memory).
MEMO_LIMIT: Final = 200_000
_DEC_MEMO_MAX: Final = 2_000_000  # the decode memo's bound (it holds a model's whole grid when it fits)
_SHARED_COSTS_MAX: Final = 32  # latency models whose memos are kept across policy instances
INF: Final = float("inf")


class IterationCosts:
    """Memoised iteration costs of one latency model (seconds)."""

    __slots__ = (
        "_ctx",
        "_ctx_per_pair",
        "_dec",
        "_dec_limit",
        "_dvals",
        "_kv_grid",
        "_pre",
        "_prefill_s",
        "ce",
        "floors_hold",
        "kv_cap",
        "max_seqs",
        "mbt",
        "model",
        "p0",
        "scale",
    )

    def __init__(self, model: LatencyModel) -> None:
        self.model = model
        self.mbt = model.max_num_batched_tokens
        self.max_seqs = model.max_num_seqs
        self.kv_cap = model.kv_capacity_tokens
        # An iteration carrying prompt tokens and no decode, with zero tokens: one weight read.
        self.p0 = model.decode_iteration_s(1, 0)
        # Learned correction: observed / profile iteration time for this model (1.0 =
        # the profile; set by LatencyCorrection, quantised so memo keys stay few).
        self.scale = 1.0
        self._dec: dict[int, float] = {}
        # Every (batch, KV quantum) a check can ask for fits, up to a bound: a memo that
        # is cleared while it is being filled would be refilled forever.
        self._dec_limit = min(_DEC_MEMO_MAX, max(MEMO_LIMIT, (self.max_seqs + 2) * (self.kv_cap // KV_QUANTUM + 2)))
        self._pre: dict[int, float] = {}
        self._prefill_s: dict[int, float] = {}
        self._ctx: dict[int, float] = {}
        self._ctx_per_pair = model.context_s_per_pair
        # The decode table's KV grid: between its points the decode time is linear in KV,
        # which lets max_kv() invert it exactly.
        self._kv_grid: tuple[int, ...] = tuple(model.to_dict()["decode"]["kvTokens"])
        self._dvals: dict[int, tuple[float, ...]] = {}
        # chunk_extra(n) for 0 <= n <= maxNumBatchedTokens (every chunk a check sees),
        # filled on first use: a list index is cheaper than a dict lookup in the hot loop.
        self.ce: list[float | None] = [None] * (self.mbt + 1)
        # Chunk costs never fall as a chunk grows (the prefill table is non-decreasing)
        # and context costs are not negative, so a first-token estimate only grows with
        # the pending tokens: what the feasibility rule's floors rest on
        # (routing_feasibility.server_step, floors_refuse).
        self.floors_hold = model.prefill_nondecreasing() and model.context_s_per_pair >= 0.0

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
            return INF if j == len(ks) - 2 else float(ks[j + 1])
        return ks[j] + (budget_s - ds[j]) / slope

    def decode(self, batch: int, kv: int) -> float:
        q = -(-kv // KV_QUANTUM)
        key = (batch << 32) | q
        v = self._dec.get(key)
        if v is None:
            if len(self._dec) > self._dec_limit:
                self._dec.clear()
            v = self._dec[key] = self.model.decode_iteration_s(batch, q * KV_QUANTUM)
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
            if len(self._pre) > MEMO_LIMIT:
                self._pre.clear()
            v = self._pre[tokens] = max(0.0, self.model.iteration_s(0, 0, tokens) - self.p0)
        return v

    def context_s(self, tokens: int) -> float:
        """Attention of a ``tokens``-token prompt's chunks to its earlier chunks (the
        profile's ``contextNsPerTokenPair``; chunks of ``maxNumBatchedTokens``), which
        :meth:`chunk_extra` leaves out. Without it a 12k-token prompt's prefill is
        estimated ~20% short and a 60k one 2.3x short on llama-3.1-8b-a100."""
        if tokens <= self.mbt or not self._ctx_per_pair:
            return 0.0  # one chunk or none: no earlier chunk to attend to (the formula's 0)
        v = self._ctx.get(tokens)
        if v is None:
            if len(self._ctx) > MEMO_LIMIT:
                self._ctx.clear()
            C = self.mbt
            q, r = divmod(tokens, C)
            v = self._ctx[tokens] = self._ctx_per_pair * (C * C * q * (q - 1) // 2 + r * q * C)
        return v

    def idle_prefill(self, tokens: int) -> float:
        v = self._prefill_s.get(tokens)
        if v is None:
            if len(self._prefill_s) > MEMO_LIMIT:
                self._prefill_s.clear()
            # what a client waits on an idle server: request overhead + the prompt's chunks
            v = self._prefill_s[tokens] = self.model.first_token_s(tokens)
        return v


# id(model) -> its memoised costs, shared by every RoutingPolicy of the process: they are
# pure functions of the (immutable) model, and a fleet simulator's goodput search or a
# router's config reload builds many policies over the same few models. Each IterationCosts
# holds its model, so an id in this table cannot be reused by another model.
_SHARED_COSTS: dict[int, IterationCosts] = {}


def costs_for(model: LatencyModel) -> IterationCosts:
    c = _SHARED_COSTS.get(id(model))
    if c is None or c.model is not model:
        if len(_SHARED_COSTS) >= _SHARED_COSTS_MAX:
            _SHARED_COSTS.clear()
        c = _SHARED_COSTS[id(model)] = IterationCosts(model)
    return c


# (the bin's models, their learned scales, its TPOT, turnover, slack) -> that bin's level memo (see _Bin.level_memo),
# shared the same way: the bounds are pure functions of this key. The key holds the
# IterationCosts objects themselves (identity hash), so it cannot match a later model.
_SHARED_LEVELS: dict[tuple[Any, ...], dict[int, Any]] = {}
_SHARED_LEVELS_MAX: Final = 32  # each can hold thousands of level lists: keep few


def level_memo_for(costs: list[IterationCosts], tpot_s: float, turnover: float, slack_s: float = 0.0) -> dict[int, Any]:
    """``slack_s``: the bin's TTFT times the policy's protected slack share (the per-token
    budget the bounds use is ``tpot_s + slack_s / horizon``, the horizon in the inner key)."""
    key = (tuple(costs), tuple(c.scale for c in costs), tpot_s, turnover, slack_s)
    m = _SHARED_LEVELS.get(key)
    if m is None:
        if len(_SHARED_LEVELS) >= _SHARED_LEVELS_MAX:
            _SHARED_LEVELS.clear()
        m = _SHARED_LEVELS[key] = {}
    return m


def prompt_class(prompt: int) -> tuple[int, int]:
    """(class, lower bound): prompts grouped 8 per octave, bounded below (optimistic)."""
    if prompt < 16:
        return prompt, prompt
    e = prompt.bit_length() - 4
    top = prompt >> e  # 8..15
    return (e << 4) | top, top << e
