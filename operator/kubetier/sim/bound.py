"""A fluid upper bound on a scenario's goodput, from the latency profile alone.

Per tier k (mean prompt p_k, mean output o_k, TPOT target T_k), one server running a
steady batch of B sequences of tier k completes B / o_k requests per iteration and
must prefill B * p_k / o_k prompt tokens per iteration on average. The engine prefills
in chunks of C = maxNumBatchedTokens - B tokens, each costing P(C) - P(0) beyond a decode
step, so the mean iteration time is

    tau(B) = D(B, B * (p_k + o_k / 2)) + (B * p_k / o_k) / C * (P(C) - P(0))

and under per-token deadlines (slack carries over between tokens) the tier is served
while tau(B) <= T_k. The per-server capacity is ``mu_k = max_B B / (o_k * tau(B))`` over
B <= maxNumSeqs with the KV cache holding B * (p_k + o_k) tokens. Tiers packed optimally
onto N servers (fractional servers, each tier on its own share, which is optimal because
a looser tier gains nothing from a tighter server) give the bound

    lambda* = N / sum_k (f_k / mu_k)        (f_k: tier k's share of requests)

It ignores queueing, burstiness and length variance (all of which only cost goodput),
and a tier whose TTFT is below an idle server's prefill of its mean prompt gets mu = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetier.policy.latency import LatencyModel


@dataclass
class TierCapacity:
    name: str
    share: float
    mean_prompt: float
    mean_output: float
    per_server_rps: float  # mu_k
    best_batch: int


def tier_capacity(
    model: LatencyModel, mean_prompt: float, mean_output: float, tpot_s: float, ttft_s: float
) -> tuple[float, int]:
    if model.prefill_s(int(mean_prompt)) > ttft_s:
        return 0.0, 0
    p0 = model.decode_iteration_s(1, 0)  # P(0): one weight read, paid by the decode step
    best, best_b = 0.0, 0
    for B in range(1, model.max_num_seqs + 1):
        C = model.max_num_batched_tokens - B
        if C < 1:
            break
        if B * (mean_prompt + mean_output) > model.kv_capacity_tokens:
            break
        prefill_per_iter = B * mean_prompt / mean_output
        chunk_cost = model.iteration_s(0, 0, C) - p0
        tau = model.decode_iteration_s(B, int(B * (mean_prompt + mean_output / 2))) + prefill_per_iter / C * chunk_cost
        if tau > tpot_s:
            continue
        rps = B / (mean_output * tau)
        if rps > best:
            best, best_b = rps, B
    return best, best_b


def fluid_bound(
    model: LatencyModel, n_servers: int, tiers: list[tuple[str, float, float, float, float, float]]
) -> tuple[float, list[TierCapacity]]:
    """``tiers``: (name, share, mean_prompt, mean_output, tpot_s, ttft_s). Returns (requests/s, per-tier capacities)."""
    caps = []
    load = 0.0
    for name, share, p, o, tpot_s, ttft_s in tiers:
        mu, b = tier_capacity(model, max(1.0, p), max(1.0, o), tpot_s, ttft_s) if share > 0 else (0.0, 0)
        caps.append(TierCapacity(name, share, p, o, mu, b))
        if share > 0:
            if mu <= 0:
                return 0.0, caps
            load += share / mu
    return (n_servers / load if load > 0 else 0.0), caps
