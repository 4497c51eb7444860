"""The fleet simulator uses the profile's request overhead and its attention to earlier
prompt chunks: one request on an idle server sees exactly the model's first-token time."""

from __future__ import annotations

import dataclasses

import pytest

from kubetier.policy.latency import load_profile
from kubetier.policy.routing import TierSLO
from kubetier.sim.engine import SimConfig, Simulator
from kubetier.sim.metrics import Collector
from kubetier.sim.workload import Arrival


def _first_token_s(model, prompt: int, ttft_ms: float = 60_000.0) -> tuple[float, bool]:
    tiers = [TierSLO("only", ttft_ms=ttft_ms, tpot_ms=1_000, priority=1, mean_output_tokens=2)]
    cfg = SimConfig(tiers=tiers, server_tiers=["only"], model=model, policy_kind="static-partition")
    col = Collector(1)
    Simulator(cfg, sink=col).run(iter([Arrival(0.0, prompt, 2, 0)]))
    assert len(col) == 1
    return col.ttft[0], bool(col.ok[0])


@pytest.mark.parametrize("prompt", [100, 2048, 32 * 1024])
def test_idle_first_token_is_the_models(prompt):
    model = load_profile("llama-3.1-8b-h100")
    ttft, _ = _first_token_s(model, prompt)
    assert ttft == pytest.approx(model.first_token_s(prompt), rel=1e-6)  # the clock keeps ~1e-8 s


def test_long_prompts_and_overhead_cost_what_the_new_terms_say():
    model = load_profile("llama-3.1-8b-h100")
    bare = dataclasses.replace(model, request_overhead_s=0.0, context_s_per_pair=0.0)
    n = 32 * 1024
    with_terms, _ = _first_token_s(model, n)
    without, _ = _first_token_s(bare, n)
    C = model.max_num_batched_tokens
    pairs = sum(C * i * C for i in range(n // C))
    assert with_terms - without == pytest.approx(model.request_overhead_s + pairs * model.context_s_per_pair, rel=1e-6)
    assert with_terms > 1.5 * without  # a 32k prompt: the earlier chunks are most of the extra


def test_request_overhead_counts_against_the_ttft_target():
    model = load_profile("llama-3.1-8b-h100")
    prefill_ms = model.prefill_s(100) * 1e3
    # A target between the prefill alone and prefill + overhead is missed only because of
    # the overhead.
    target = prefill_ms + model.request_overhead_s * 1e3 / 2
    _, ok = _first_token_s(model, 100, ttft_ms=target)
    assert not ok
    _, ok_bare = _first_token_s(dataclasses.replace(model, request_overhead_s=0.0), 100, ttft_ms=target)
    assert ok_bare
