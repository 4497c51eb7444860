"""Feeding the online latency correction from the streams the router relays.

The routing policy admits by the latency profile scaled by a learned correction
(``kubetier.policy.latency_learning.LatencyCorrection``, the same class the fleet
simulator feeds). The router's observations are the streams it relays, each timed on
the router's clock with the load the router knew the server to carry:

- **decode**: a stream's mean time per token on one server, ``(last - first) / (n - 1)``
  over at least ``MIN_DECODE_TOKENS`` tokens (the end points' scheduling jitter shrinks
  with n), against the profile's decode iteration at the server's batch and KV,
  averaged over the stream's admission and its end;
- **first token**: the time from sending the request to its first token, against one
  iteration carrying the whole prompt beside the batch the server held (half an
  iteration already in flight added when it held any), taken only when no other
  prompt was waiting on that server (queueing is not the model's to learn) and the
  prompt fits one chunk.

A stream resumed on another server teaches nothing (its timings span two servers), nor
does a stream that failed. The corrections stay bounded as ``LatencyCorrection``
bounds them (each observation counts as at most 2x off; the median over servers).

Known bias, stated: decode intervals also carry the prefill chunks of other requests
admitted meanwhile, so under a stream of arrivals the learned scale leans high (the
router then admits a little more conservatively, not less).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubetier.policy.latency import LatencyModel
from kubetier.policy.latency_learning import LatencyCorrection
from kubetier.policy.routing_costs import costs_for

if TYPE_CHECKING:
    from kubetier.policy.routing import RoutingPolicy

MIN_DECODE_TOKENS = 8


class LatencyFeed:
    """One model fleet's learner, fed per finished stream."""

    def __init__(self, policy: RoutingPolicy, model: LatencyModel) -> None:
        self.policy = policy
        self.learner = LatencyCorrection(policy)
        self.costs = costs_for(model)
        self.decode_observations = 0
        self.first_token_observations = 0

    @property
    def scale(self) -> float:
        """The learned correction now in force (1.0 = the profile)."""
        return self.costs.scale

    def snapshot(self, server_id: str) -> tuple[int, int, int] | None:
        """(running, KV tokens, queued prompt tokens) of a server, as the policy sees it."""
        load = self.policy.server(server_id)
        if load is None:
            return None
        return load.running, load.kv_tokens, load.queued_prefill_tokens

    def stream_done(
        self,
        server_id: str,
        at_admit: tuple[int, int, int],
        prompt_tokens: int,
        sent_at: float,
        first_at: float,
        last_at: float,
        tokens: int,
    ) -> None:
        """A stream finished on ``server_id``: learn from its first token and decode
        rate. ``at_admit``: the server's load just after this request was admitted."""
        costs = self.costs
        running0, kv0, queued0 = at_admit
        if first_at > sent_at > 0.0 and queued0 <= prompt_tokens and prompt_tokens <= costs.mbt:
            others = max(running0 - 1, 0)  # the batch beside this request
            kv_others = max(kv0 - prompt_tokens, 0)
            if others:
                step = costs.decode(others, kv_others)
                predicted = 1.5 * step + costs.chunk_extra(prompt_tokens)
            else:
                predicted = costs.idle_prefill(prompt_tokens)
            self.learner.observe(server_id, predicted, first_at - sent_at)
            self.first_token_observations += 1
        if tokens >= MIN_DECODE_TOKENS and last_at > first_at:
            now = self.snapshot(server_id)
            running1, kv1 = (now[0], now[1]) if now is not None else (running0, kv0)
            batch = max(1, round((running0 + max(running1, 1)) / 2))
            kv = (kv0 + kv1) // 2
            predicted = costs.decode(batch, kv)
            self.learner.observe(server_id, predicted, (last_at - first_at) / (tokens - 1))
            self.decode_observations += 1

    def forget_server(self, server_id: str) -> None:
        self.learner.forget_server(server_id)
