"""Long prompts' attention to their own earlier chunks (``contextNsPerTokenPair``) in
the policy's lag rule and per-token check (issue 13, generated seed 9009: the loose
tier's decoding sequences sat beside 12k-112k-token prefills whose context cost the
lag rule never charged; kubetier/sim/README.md "Long prefills").

The engine simulator prices every chunk iteration with that attention
(``LatencyModel.iteration_s(..., context_pairs)``); the policy's first-token and burst
checks counted it, but ``ServerLag.charge`` and the per-token check priced chunks by
``IterationCosts.chunk_extra`` alone. These tests fail with the flags off."""

from __future__ import annotations

import random

import pytest

from kubetier.policy import routing_feasibility, routing_index
from kubetier.policy.latency import load_profile
from kubetier.policy.routing import RoutingPolicy, ServerLoad, TierSLO
from kubetier.policy.routing_costs import INF

MODEL = load_profile("llama-3.1-8b-a100")
TIER = TierSLO("loose", ttft_ms=9365, tpot_ms=176, priority=100, mean_output_tokens=343)


def _server_with_one_decoding_sequence(p: RoutingPolicy):
    p.upsert_server(ServerLoad("s", "loose", MODEL))
    e = p._servers["s"]
    p.on_admit("s", 100, 300)
    p.observe("s", 1, 100, 0, iterations=1)  # its prompt is prefilled: it decodes now
    assert e.lag.decoding() == 1
    return e


def _lag_after_long_prefill(monkeypatch, flag: bool) -> tuple[float, float, float]:
    monkeypatch.setattr(routing_index, "LAG_CONTEXT", flag)
    p = RoutingPolicy([TIER], rng=random.Random(0), track_lag=True)
    e = _server_with_one_decoding_sequence(p)
    before = e.lag_s
    p.on_admit("s", 60_000, 300)
    # 20,000 of the 60,000 prompt tokens ran in 10 chunk iterations beside the sequence
    p.observe("s", 2, 20_100, 40_000, iterations=10)
    c = e.costs
    chunk = c.mbt - 2
    chunk_only = 20_000 * c.chunk_extra(chunk) / chunk - 10 * (TIER.tpot_ms / 1000.0 - c.decode(2, 20_100))
    return e.lag_s - before, chunk_only, c.context_s(20_000)


def test_lag_charges_the_long_prompts_context_to_the_decoding_sequences(monkeypatch):
    grown, chunk_only, ctx = _lag_after_long_prefill(monkeypatch, True)
    assert ctx > 0.5  # 20k tokens of a long prompt: seconds of attention to earlier chunks
    assert grown == pytest.approx(chunk_only + ctx, rel=1e-9)


def test_the_context_is_charged_where_the_prompt_is_not_from_its_start(monkeypatch):
    """The second slice of the same prompt attends to the first: it costs more context
    than the first slice of the same size."""
    monkeypatch.setattr(routing_index, "LAG_CONTEXT", True)
    p = RoutingPolicy([TIER], rng=random.Random(0), track_lag=True)
    e = _server_with_one_decoding_sequence(p)
    p.on_admit("s", 60_000, 300)
    c = e.costs
    chunk = c.mbt - 2
    margin = TIER.tpot_ms / 1000.0 - c.decode(2, 20_100)
    p.observe("s", 2, 20_100, 40_000, iterations=10)
    first = e.lag_s
    p.observe("s", 2, 20_100, 20_000, iterations=10)
    second = e.lag_s - first
    expected = 20_000 * c.chunk_extra(chunk) / chunk - 10 * margin + c.context_s(40_000) - c.context_s(20_000)
    assert second == pytest.approx(expected, rel=1e-9)
    assert c.context_s(40_000) - c.context_s(20_000) > c.context_s(20_000)


def test_without_the_flag_the_lag_misses_the_context(monkeypatch):
    grown, chunk_only, ctx = _lag_after_long_prefill(monkeypatch, False)
    assert grown == pytest.approx(chunk_only, rel=1e-9)
    assert ctx > 0.5


@pytest.mark.parametrize("flag", [True, False])
def test_per_token_check_counts_the_pending_prompts_context(monkeypatch, flag: bool):
    """A server with sequences decoding and a 60k-token prompt to take: with a per-token
    limit between the estimate without the prompt's context and the estimate with it,
    the check refuses exactly when the context is counted."""
    monkeypatch.setattr(routing_feasibility, "PENDING_CONTEXT", flag)
    p = RoutingPolicy([TIER], rng=random.Random(0), track_lag=False)
    p.upsert_server(ServerLoad("s", "loose", MODEL))
    p.observe("s", 8, 40_000, 0)
    e = p._servers["s"]
    c = e.costs
    prompt, H = 60_000, 50
    kv_end = 40_000 + prompt + 9 * H
    without = c.decode(9, kv_end) + routing_feasibility.prefill_share_s(c, 8, prompt, H, 0.0)
    ctx = routing_feasibility.pending_context_share_s(c, 8, 0, prompt, H)
    assert ctx == pytest.approx(c.context_s(prompt) / H)
    limit = (without + ctx / 2) * c.scale
    ok = routing_feasibility.feasible(e, prompt, H, INF, limit, 0.0)
    assert ok is (not flag)
    assert routing_feasibility.pending_context_share_s(c, 0, 0, prompt, H) == 0.0  # idle: TTFT covers it
