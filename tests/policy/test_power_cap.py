"""A capped server is a slower server: the slowdown law and the capped profile."""

from __future__ import annotations

import pytest

from kubetier.policy.latency import load_profile
from kubetier.policy.power_cap import cap_slowdown, capped_model

MODEL = load_profile("llama-3.1-8b-h100")


def test_slowdown_is_one_under_the_cap_and_follows_the_square_law_above():
    assert cap_slowdown(300, 420, 80) == 1.0
    assert cap_slowdown(300, None, 80) == 1.0
    # (620 - 80) / (215 - 80) = 4 -> 4 ** 0.5 = 2.
    assert cap_slowdown(620, 215, 80) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="above the idle power"):
        cap_slowdown(620, 80, 80)


def test_uncapped_or_cap_at_tdp_is_the_model_itself():
    assert capped_model(MODEL, None) is MODEL
    assert capped_model(MODEL, MODEL.tdp_watts) is MODEL
    assert capped_model(MODEL, 420) is capped_model(MODEL, 420.0)  # cached


def test_capped_model_slows_only_iterations_drawing_more_than_the_cap():
    cap = 420.0
    c = capped_model(MODEL, cap)
    assert c.name == "llama-3.1-8b-h100@cap420W"
    # Batch 1 decode draws 303 W < 420 W: unchanged.
    assert c.decode_iteration_s(1, 0) == pytest.approx(MODEL.decode_iteration_s(1, 0))
    # Batch 128 draws 600.5 W: slowed by sqrt((600.5 - 80) / (420 - 80)).
    factor = ((600.5 - 80) / (cap - 80)) ** 0.5
    assert c.decode_iteration_s(128, 110592) == pytest.approx(MODEL.decode_iteration_s(128, 110592) * factor, rel=1e-4)
    # A full prefill chunk draws 656.6 W.
    pf = ((656.6 - 80) / (cap - 80)) ** 0.5
    assert c.prefill_s(2048) == pytest.approx(MODEL.prefill_s(2048) * pf, rel=1e-4)
    # It draws the cap at most.
    assert c.power_watts(0, 2048) == cap
    assert c.power_watts(256, 0) == cap
    assert c.power_watts(1, 0) == MODEL.power_watts(1, 0)


def test_deeper_cap_is_slower_everywhere():
    a, b = capped_model(MODEL, 490), capped_model(MODEL, 315)
    for batch in (8, 64, 256):
        assert (
            b.decode_iteration_s(batch, 50_000)
            >= a.decode_iteration_s(batch, 50_000)
            >= MODEL.decode_iteration_s(batch, 50_000)
        )
    assert b.prefill_s(4096) > a.prefill_s(4096) > MODEL.prefill_s(4096)


def test_cap_at_or_below_idle_is_refused():
    with pytest.raises(ValueError, match="idle power"):
        capped_model(MODEL, 60)
