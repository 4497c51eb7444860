"""How many iterations each engine ran between two scrapes: the give-back half of the
routing policy's lag (``kubetier.policy.routing_index.ServerLag``).

The policy tracks how far each server's decoding sequences are behind their per-token
deadlines: prompt chunks run next to them put them behind, every iteration gives each
of them a token and so gives back ``TPOT - decode step``. The fleet simulator reports
both exactly after every step. The router learns the prefill half from the streams it
relays (a prompt's first token = its chunks ran; ``RoutingPolicy.on_prefill_done``)
and the iterations here, from the engine's own step counter: vLLM's
``vllm:iteration_tokens_total`` histogram (tokens per engine step; its ``_count`` is
the number of steps), which the bundled engine simulator exports too. An engine that
exports none gets ``None``: the policy then estimates the iterations from the KV growth
over its decoding sequences.
"""

from __future__ import annotations

_ITERATIONS = b"vllm:iteration_tokens_total_count"


class EngineProgress:
    """Per server, the step counter at the last scrape; ``steps`` returns the steps
    since then (None the first time, after a counter reset, or without a counter)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def steps(self, server_id: str, count: float | None) -> int | None:
        """The steps since the last scrape, from the counter ``_ITERATIONS`` that
        ``fleet.parse_engine_scrape`` read (one pass over /metrics)."""
        if count is None:
            self._last.pop(server_id, None)
            return None
        last = self._last.get(server_id)
        self._last[server_id] = count
        if last is None or count < last:  # first scrape, or the engine restarted
            return None
        return int(count - last)
