"""The forecast rescue: a request the steady-refill forecast alone refuses everywhere,
and that cannot wait for a batch to drain, goes where the known work lets it.

The SLO policy's per-token check (:func:`~kubetier.policy.routing_feasibility.feasible`)
adds a *steady refill* to every candidate: each running sequence is assumed to be
replaced as it finishes, so the server prefills ``running x (mean prompt / mean output)``
tokens per iteration on top of the work it holds now. That forecast is right for a
server kept full, and it is what stops the policy packing a tight tier until it
collapses. But on tiers with long prompts and short outputs it is large (2,000-token
prompts over 28-token outputs: ~70 prompt tokens per iteration per running sequence),
and when it alone refuses every server of the usable bins the request waits; a
rejecting tier's request whose wait budget is shorter than a running sequence of its
tier takes to finish (the :func:`~kubetier.policy.routing_slo.rescue_route` condition)
then waits only to be rejected, beside servers that would have served it on time.

Diagnosed on generated seed 8015 (70B on H100, four tiers in a pool of 9, TTFT
648-1,100 ms, zipf prompts of 2,048 tokens mean and outputs of 28): at 0.96x the
nominal rate kubetier rejected 30 of 234 and 34 of 278 requests of the two tightest
tiers (1,300-5,000-token prompts whose idle prefill takes 100-480 ms of a 648 ms TTFT),
least-loaded 4 and 1 (only prompts no server can prefill in time), with TPOT p90 of
31-35 ms against 39 ms for both. Of the 707 "wait" answers for those two tiers, 639 had
a server that passes every check with the refill forecast left out (678 with no
per-token check at all, 364 without the burst check, 15 with the whole TTFT instead of
the headroomed budget). Least-loaded passed at 1.14x, two-class at 1.36x, kubetier at
0.81x (kubetier/sim/README.md, "Forecast rescue").

The rule: such a request goes to the least loaded server of its usable bins (own bin
first, then the tighter bins it may spill onto, as :func:`rescue_route` scans) that
passes every check with the steady refill cut to ``FORECAST_RESCUE_REFILL`` (half) of
the forecast: capacity, first token within the
(headroomed) budget, the prefill burst, the per-token limit of the work the server
holds now plus this prompt, the second token, and for a spill the host's room. Least
loaded first (what the winning baseline does), so the forecast still decides where
most requests go and the rescued ones land where the forecast is least wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubetier.policy.routing_feasibility import feasible, host_keeps_room
from kubetier.policy.routing_index import RANK_MASK

if TYPE_CHECKING:
    from kubetier.policy.routing import Decision, RoutingPolicy, TierSLO

__all__ = ["FORECAST_RESCUE_CHECKS", "FORECAST_RESCUE_REFILL", "forecast_rescue_route"]

# Servers the forecast rescue checks per bin, least loaded first (as RESCUE_CHECKS).
FORECAST_RESCUE_CHECKS = 8
# Share of the steady-refill forecast a rescued request must still leave room for. 0 (the
# forecast left out) rescued seed 8015 but packed the looser tiers of dev seeds 6000,
# 6002, 6012 and 6018 past their TPOT (6018's 35 ms tier: p90 52 -> 81 ms), so that the
# goodput search lost a step on each; 0.5 kept 8015's gain and three of the four (the
# two values tried, on dev seeds only; kubetier/sim/README.md "Forecast rescue").
FORECAST_RESCUE_REFILL = 0.5


def forecast_rescue_route(p: RoutingPolicy, t: TierSLO, prompt: int, ttft_budget_s: float) -> Decision | None:
    """Route to the least loaded server of ``t``'s usable bins that passes the full check
    with half the steady-refill forecast (module docstring); None when none does."""
    own = True
    H = p.traffic[t.name].h
    own_tpot_s = p._bins[t.name].tpot_s
    for b in p._route_bins[t.name]:
        keys = b.keys
        n = min(len(keys), FORECAST_RESCUE_CHECKS)
        if n:
            host = p.traffic[b.tier.name]
            tpot_s = b.tpot_s + p.protected_slack * b.ttft_s / host.h
            burst_s = p.burst_slack * b.ttft_s
            host_h = host.h if p.shared_slack else 0
            refill = host.r_value * p.turnover * FORECAST_RESCUE_REFILL
            for j in range(n):
                e = p._by_rank[keys[j] & RANK_MASK]
                if feasible(e, prompt, H, ttft_budget_s, tpot_s, refill, own_tpot_s, burst_s, host_h) and (
                    own or host_keeps_room(e, prompt, b.ttft_s, host.probe)
                ):
                    return p._route(e.load.server_id, "forecast-rescue" if own else "spill")
        own = False
    return None
