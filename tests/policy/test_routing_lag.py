"""The policy's lag bookkeeping (kubetier.policy.routing_index.ServerLag) against a
per-sequence reference written the obvious way: every sequence keeps its own lag, every
report adds the chunks' extra cost and takes back each iteration's margin on every
decoding sequence, prompts start decoding (at zero lag) when their last token is
prefilled, the oldest decoding sequences finish first, and the server's lag is the
worst sequence's. The policy keeps one clock and a sliding minimum instead (O(1) per
event); on random event streams both must agree, event for event."""

from __future__ import annotations

import random

import pytest

from kubetier.policy.routing import RoutingPolicy, ServerLoad, TierSLO
from linear_latency_model import MODEL

TIER = TierSLO("t", ttft_ms=2000, tpot_ms=30, priority=100, mean_output_tokens=100)


class ReferenceLag:
    def __init__(self) -> None:
        self.pending: list[int] = []  # prompt tokens left, admission order
        self.decoding: list[float] = []  # each decoding sequence's lag, oldest first

    def report(self, costs, tpot_s: float, prefilled: int, iterations: int, finished: int, running: int, kv: int):
        if self.decoding:
            chunk = costs.mbt - running
            dt = prefilled * costs.chunk_extra(chunk) / chunk - iterations * (tpot_s - costs.decode(running, kv))
            self.decoding = [x + dt for x in self.decoding]
        while prefilled > 0 and self.pending:
            if self.pending[0] > prefilled:
                self.pending[0] -= prefilled
                break
            prefilled -= self.pending.pop(0)
            self.decoding.append(0.0)
        del self.decoding[:finished]

    def lag(self) -> float:
        return max(self.decoding) if self.decoding else 0.0


@pytest.mark.parametrize("seed", range(20))
def test_the_lag_is_the_worst_decoding_sequence_s(seed: int):
    rng = random.Random(seed)
    p = RoutingPolicy([TIER], rng=random.Random(0), track_lag=True)
    p.upsert_server(ServerLoad("s", "t", MODEL))
    e = p._servers["s"]
    ref = ReferenceLag()
    kv = 0
    for _ in range(300):
        for _ in range(rng.choice((0, 0, 1, 2))):
            prompt = rng.choice((1, 50, 400, 999, 2500, 6000))
            p.on_admit("s", prompt, 100)
            ref.pending.append(prompt)
        queued = sum(ref.pending)
        prefilled = min(queued, rng.choice((0, 0, 300, 998, 3000)))
        iterations = rng.choice((1, 2, 5, 40))
        finished = min(len(ref.decoding), rng.choice((0, 0, 0, 1, 2)))
        # the report's batch (after the finishes) prices the iterations
        running = len(ref.decoding) + len(ref.pending) - finished
        kv += rng.randint(0, 200)
        ref.report(e.costs, e.bin.tpot_s, prefilled, iterations, finished, running, kv)
        if running == 0:
            ref = ReferenceLag()
        p.observe("s", running, kv, queued - prefilled, iterations=iterations)
        assert e.lag_s == pytest.approx(ref.lag(), abs=1e-9)
        assert e.lag.decoding() == len(ref.decoding)
