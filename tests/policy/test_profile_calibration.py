"""The built-in profiles against the published measurements they cite.

Every fitted or checked point must lie within its stated tolerance; the first
derivation (flat GEMMs below the ridge, 8 us per sequence, no request overhead, no
attention to earlier prompt chunks) must miss the points those terms were added for,
so these tests fail on it."""

from __future__ import annotations

import pytest

from kubetier.policy import profile_calibration as cal
from kubetier.policy import profile_derivation as d
from kubetier.policy.latency import load_profile


@pytest.mark.parametrize("point", cal.asserted_points(), ids=lambda p: f"{p.profile}: {p.what}")
def test_profile_matches_published_point(point):
    got = point.derived()
    assert abs(got / point.published - 1) <= point.tolerance, (
        f"{point.profile} {point.what}: derived {got:.4g} {point.unit}, published {point.published:.4g} "
        f"(tolerance {point.tolerance:.0%}; {point.source})"
    )


def test_first_derivation_misses_what_the_new_terms_fix():
    by_what = {(p.profile, p.what): p for p in cal.PUBLISHED_POINTS}
    # Request overhead: TTFT of a short prompt on an idle engine is twice one iteration.
    ttft = by_what[(cal.H100_8B, "TTFT p50, 1 stream")]
    assert not ttft.holds(legacy=True) and ttft.error(legacy=True) < -0.4
    # Per-sequence growth below the ridge (kernel-level, Vidur).
    for profile in (cal.H100_8B, cal.H100_70B, cal.A100_8B):
        point = next(p for p in cal.PUBLISHED_POINTS if p.profile == profile and "128 tokens / 1 token" in p.what)
        assert not point.holds(legacy=True)
        assert point.holds()
    failing = [p.what for p in cal.asserted_points() if not p.holds(legacy=True)]
    assert len(failing) >= 4, failing


def test_decode_cost_per_sequence_grows_several_times_faster_than_before():
    for name in d.SETUPS:
        new, old = d.SETUPS[name], d.legacy_setup(name)
        per_seq_new = (new.decode_s(16, 0) - new.decode_s(1, 0)) / 15
        per_seq_old = (old.decode_s(16, 0) - old.decode_s(1, 0)) / 15
        assert per_seq_new > 2.5 * per_seq_old, name
        # Batch 1 is where the first derivation was right: unchanged within 1%.
        assert new.decode_s(1, 600) == pytest.approx(old.decode_s(1, 600), rel=0.01)


def test_long_prompt_pays_attention_to_earlier_chunks():
    m = load_profile("llama-3.1-8b-h100")
    C = m.max_num_batched_tokens
    per_pair = m.context_s_per_pair
    assert per_pair > 0
    # 4 * hidden * layers FLOPs per pair at half of peak BF16: ~1 ns on an H100.
    assert per_pair == pytest.approx(4 * 4096 * 32 / (989e12 * 0.5), rel=0.01)
    # A 32k prompt in 2k chunks: chunk i sees i * 2k earlier tokens.
    n = 32 * 1024
    chunks = n // C
    pairs = sum(C * i * C for i in range(chunks))
    without = chunks * m.iteration_s(0, 0, C)
    assert m.prefill_s(n) == pytest.approx(without + pairs * per_pair, rel=1e-9)
    # ... two thirds as much again as the chunks' own work at 32k (Llama-3.1-8B, H100).
    assert 0.5 < pairs * per_pair / without < 0.8
    assert m.prefill_s(C) == pytest.approx(m.iteration_s(0, 0, C))
    # The same sum through iteration_s, chunk by chunk, as an engine runs it.
    stepwise = sum(m.iteration_s(0, 0, C, C * i * C) for i in range(chunks))
    assert stepwise == pytest.approx(m.prefill_s(n), rel=1e-9)


def test_every_profile_states_engine_version_and_overhead():
    for name in d.SETUPS:
        m = load_profile(name)
        assert m.engine.startswith("vllm 0."), name
        assert m.request_overhead_s == pytest.approx(7.5e-3)
        assert m.first_token_s(100) == pytest.approx(m.request_overhead_s + m.prefill_s(100))
        assert any("vLLM 0." in s for s in m.sources), name


def test_calibration_table_cli(capsys):
    assert cal.main([]) == 0
    out = capsys.readouterr().out
    assert "TTFT p50, 1 stream" in out and "not asserted" in out
    assert cal.main(["-o", "json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(cal.PUBLISHED_POINTS)
    assert all({"published", "old", "new"} <= set(r) for r in rows)
