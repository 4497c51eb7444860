"""The simulator's scheduler on a virtual clock: what the latency model predicts.

Runs the same ``BatchScheduler`` and ``LatencyModel`` as the live engine, without
sleeping, so tests and the fidelity benchmark can compare measured TTFT/TPOT on a
real socket with the model's prediction for the same arrivals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kubetier.engine_sim.scheduler import BatchScheduler, Sequence
from kubetier.policy.latency import LatencyModel


@dataclass(frozen=True)
class Predicted:
    arrival_s: float
    ttft_s: float
    tpot_s: float  # mean gap between tokens after the first (0 for one-token outputs)
    e2e_s: float


def predict(
    model: LatencyModel,
    requests: Iterable[tuple[float, int, int]],
    *,
    max_num_seqs: int | None = None,
    time_scale: float = 1.0,
    slowdown: float = 1.0,
) -> list[Predicted]:
    """Per request ``(arrival_s, prompt_tokens, output_tokens)``, in input order."""
    reqs = [(float(a), int(p), int(o)) for a, p, o in requests]
    order = sorted(range(len(reqs)), key=lambda i: reqs[i][0])
    seqs = [Sequence(p, o, arrival=a) for a, p, o in reqs]
    sched = BatchScheduler(max_num_seqs or model.max_num_seqs, model.max_num_batched_tokens, model.kv_capacity_tokens)
    factor = slowdown / time_scale
    # A request reaches the scheduler after the request overhead (Engine.submit).
    overhead = model.request_overhead_s / time_scale
    now = 0.0
    nxt = 0
    done = 0
    while done < len(seqs):
        while nxt < len(order) and seqs[order[nxt]].arrival + overhead <= now:
            sched.add(seqs[order[nxt]])
            nxt += 1
        if not sched.has_work:
            now = seqs[order[nxt]].arrival + overhead
            continue
        step = sched.plan(now)
        now += model.iteration_s(step.decode_batch, step.kv_tokens, step.prefill_tokens, step.context_pairs) * factor
        done += len(sched.commit(step, now).finished)
    out = []
    for s in seqs:
        ttft = s.first_token_at - s.arrival
        e2e = s.finished_at - s.arrival
        tpot = (e2e - ttft) / (s.output_tokens - 1) if s.output_tokens > 1 else 0.0
        out.append(Predicted(s.arrival, ttft, tpot, e2e))
    return out
