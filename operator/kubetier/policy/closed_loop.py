"""Steady-state TTFT and TPOT of closed-loop streams, from the latency model alone.

Used to hold the model against published closed-loop sweeps (``vllm bench serve
--max-concurrency C``, InferenceBench concurrency sweeps: fixed prompt and output
lengths, ``C`` streams each sending its next request when the last one ends) and by
the engine simulator's fidelity benchmark (``kubetier engine-sim bench``), which
measures the simulator the same way. Pure: no clock, no I/O.

With ``C`` closed-loop streams, prompt ``P``, output ``O`` and the streams' phases
spread evenly:

* one stream's cycle, in engine iterations: its request arrives while an iteration
  runs (the engine plans the next one the moment it commits the last, before the
  client can answer), waits that iteration out, is prefilled in ``n_p`` iterations
  (1 when the prompt fits the token budget left by the decodes) whose last one also
  yields the first token, then decodes ``O - 1`` tokens: ``L = 1 + n_p + O - 1``;
* so every iteration carries ``d = C (O - 1) / L`` decodes holding ``P + O/2`` KV
  tokens each, and ``C n_p / L`` prompts in prefill (evenly spread: the floor or
  the ceiling of that mean); a prompt split into ``n_p`` chunks attends to its
  earlier chunks, ``P^2 (1 - 1/n_p) / 2`` token pairs over its ``n_p`` iterations;
* a request overhead (``requestOverheadMs``: HTTP, tokenization) is spent outside
  the engine: only the share ``L tau / (overhead + L tau)`` of a cycle is in it, and
  the request lands at a random phase: it waits out the rest of a length-biased
  iteration (``E[tau^2] / 2 E[tau]``), and the prompts per iteration are Poisson
  rather than evenly spread (clusters cost more: an iteration is convex in its
  prompt tokens);
* TPOT is the mean iteration time ``tau``; TTFT is the request overhead, the
  iteration waited out and the prefill iteration(s):
  ``overhead + tau_waited + n_p tau_prefill`` (``tau_prefill`` the mean
  time of an iteration that carries a given prompt, weighted by how many prompts it
  holds; ``tau_waited`` is ``tau`` when every iteration carries prompts, and with
  fewer than one per iteration the slot before a prompt's own is prompt-free unless
  the even spread puts two prompts in adjacent slots, a share ``2 - 1/c``);
* one stream alone (``C = 1``) finds the engine idle: TTFT = ``first_token_s(P)``;
* when ``C`` would need more than ``max_num_seqs`` (or the KV cache) running, the
  engine runs full and the rest queue: throughput ``X = M / (O' tau)`` requests/s
  with ``M`` running and ``O' = n_p + O - 1`` iterations each, a stream's cycle is
  ``C / X``, and TTFT = cycle - ``(O - 1) tau`` (Little's law). This case is rough:
  fixed-length streams through a full engine fall into waves (admitted together,
  finished together) that an even spread does not describe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from kubetier.policy.latency import LatencyModel

__all__ = ["Prediction", "predict_closed_loop"]


@dataclass(frozen=True)
class Prediction:
    ttft_s: float
    tpot_s: float
    iteration_s: float  # mean iteration time (= TPOT)
    decode_batch: float  # mean sequences decoding per iteration
    running: float  # mean sequences admitted (prefilling or decoding)
    prefills_per_iteration: float
    cycle_s: float  # one stream: request sent to next request sent
    regime: str  # "alone", "unsaturated" or "saturated"


def _even_spread(mean: float, g: Callable[[int], float]) -> tuple[float, float]:
    """(iteration-weighted, prompt-weighted) means of ``g(k)`` when ``k`` prompts per
    iteration are spread as evenly as possible: ``floor(mean)`` or ``floor(mean) + 1``."""
    f = math.floor(mean)
    r = mean - f
    lo, hi = g(f), g(f + 1)
    per_iteration = (1 - r) * lo + r * hi
    if f == 0 or mean <= 0:
        return per_iteration, hi
    return per_iteration, ((1 - r) * f * lo + r * (f + 1) * hi) / mean


def _poisson_spread(mean: float, g: Callable[[int], float]) -> tuple[float, float, float]:
    """(iteration-weighted, prompt-weighted, length-biased residual) means of ``g(k)``
    when the prompts per iteration are Poisson with ``mean``: requests that reach the
    engine at random phases (after a varying request overhead) cluster, and because
    an iteration's cost is convex in its prompt tokens (the first few hundred ride on
    the weight read, the rest is compute) clusters cost more than an even spread."""
    if mean <= 0:
        v = g(0)
        return v, g(1), v / 2
    p = math.exp(-mean)
    k = 0
    e1 = e2 = ek = cdf = 0.0
    while cdf < 1 - 1e-9 and k < 10 * mean + 50:
        v = g(k)
        e1 += p * v
        e2 += p * v * v
        ek += p * k * v
        cdf += p
        k += 1
        p *= mean / k
    return e1, ek / mean, e2 / (2 * e1)


def predict_closed_loop(
    model: LatencyModel,
    concurrency: int,
    prompt_tokens: int,
    output_tokens: int,
    max_num_seqs: int | None = None,
) -> Prediction:
    """Steady-state TTFT/TPOT of ``concurrency`` closed-loop streams (see module doc)."""
    C, P, O = concurrency, prompt_tokens, output_tokens
    if C < 1 or P < 1 or O < 2:
        raise ValueError("need concurrency >= 1, prompt_tokens >= 1 and output_tokens >= 2")
    budget = model.max_num_batched_tokens
    seq_cap = min(max_num_seqs or model.max_num_seqs, model.kv_capacity_tokens // (P + O))
    if seq_cap < 1:
        raise ValueError(f"one sequence of {P + O} tokens does not fit the KV cache")
    kv_per_decode = P + O / 2  # a decoding sequence holds P + (tokens so far): O/2 on average

    if C == 1:
        tpot = model.decode_iteration_s(1, round(kv_per_decode))
        ttft = model.first_token_s(P)
        return Prediction(ttft, tpot, tpot, 1.0, 1.0, 0.0, ttft + (O - 1) * tpot, "alone")
    overhead = model.request_overhead_s

    def iteration(decodes: float, prompts_in_prefill: float, tokens_each: float) -> tuple[float, float, float]:
        kv = decodes * kv_per_decode
        room = budget - decodes
        # A prompt in n_p chunks attends to its earlier chunks: P^2 (1 - 1/n_p) / 2 pairs
        # over its n_p iterations.
        n_chunks = P / tokens_each
        pairs_each = P * P * (1.0 - 1.0 / n_chunks) / 2.0 / n_chunks

        def tau(k: int) -> float:
            tokens = min(k * tokens_each, room)
            return model.iteration_s(decodes, kv, tokens, k * pairs_each)

        if overhead:
            return _poisson_spread(prompts_in_prefill, tau)
        mean, per_prompt = _even_spread(prompts_in_prefill, tau)
        return mean, per_prompt, mean

    def prefill_iterations(decodes: float) -> int:
        return max(1, math.ceil(P / max(1.0, budget - decodes)))

    # Unsaturated: every stream is admitted as soon as it arrives. n_p depends on the
    # decode batch, which depends on n_p: a few rounds settle it.
    n_p = 1
    for _ in range(4):
        n_p = prefill_iterations(C * (O - 1) / (1 + n_p + O - 1))
    # With no overhead a request reaches the engine just after it planned the next
    # iteration and waits all of it out; after an overhead it lands at a random phase and
    # waits out half an iteration on average.
    waited_iters = 0.5 if overhead else 1.0
    cycle_iters = waited_iters + n_p + O - 1
    # A stream spends the request overhead outside the engine (HTTP, tokenization), so
    # only a share of its cycle is iterations: it and tau settle each other in a few rounds.
    share = 1.0
    for _ in range(4 if overhead else 1):
        decodes = C * (O - 1) / cycle_iters * share
        running = C * (n_p + O - 1) / cycle_iters * share
        prompts = C * n_p / cycle_iters * share
        tau, tau_prefill, tau_residual = iteration(decodes, prompts, P / n_p)
        share = cycle_iters * tau / (overhead + cycle_iters * tau)
    if running <= seq_cap:
        # The iteration waited out is the slot just before the prompt's own. Spread
        # evenly, fewer than one prompt per iteration leaves gaps of 1 or 2 slots, and
        # a share 2 - 1/c of them are 1 (the slot before carries a prompt too).
        if overhead:
            tau_waited = tau_residual  # lands at a random phase of a length-biased iteration
        elif prompts < 1.0:
            tau_idle = model.iteration_s(decodes, decodes * kv_per_decode, 0)
            busy_before = max(0.0, 2.0 - 1.0 / prompts) if prompts > 0 else 0.0
            tau_waited = tau_idle + busy_before * (tau_prefill - tau_idle)
        else:
            tau_waited = tau
        return Prediction(
            ttft_s=overhead + tau_waited + n_p * tau_prefill,
            tpot_s=tau,
            iteration_s=tau,
            decode_batch=decodes,
            running=running,
            prefills_per_iteration=prompts,
            cycle_s=overhead + cycle_iters * tau,
            regime="unsaturated",
        )

    # Saturated: seq_cap sequences run, the others queue (FIFO); a finished sequence's
    # slot is refilled at the next iteration, so no iteration is waited out.
    M = seq_cap
    n_p = 1
    for _ in range(4):
        n_p = prefill_iterations(M * (O - 1) / (n_p + O - 1))
    per_seq_iters = n_p + O - 1
    decodes = M * (O - 1) / per_seq_iters
    prompts = M * n_p / per_seq_iters
    tau, _, _ = iteration(decodes, prompts, P / n_p)
    throughput = M / (per_seq_iters * tau)  # requests per second
    cycle = C / throughput
    return Prediction(
        ttft_s=cycle - (O - 1) * tau,  # Little's law; the request overhead overlaps the queueing
        tpot_s=tau,
        iteration_s=tau,
        decode_batch=decodes,
        running=M,
        prefills_per_iteration=prompts,
        cycle_s=cycle,
        regime="saturated",
    )
