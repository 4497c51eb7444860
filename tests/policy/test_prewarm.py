"""Rules of kubetier.policy.prewarm (hybrid histogram policy, Holt forecast)."""

from __future__ import annotations

import pytest

from kubetier.policy.prewarm import HoltForecaster, IdleHistogram, PrewarmConfig, TierPrewarmer


def feed_idle_periods(p: TierPrewarmer, tier: str, gaps_s: list[float], busy_s: float = 30.0) -> float:
    """Alternate busy_s of traffic with the given idle gaps; returns the time reached."""
    t = 0.0
    for gap in gaps_s:
        p.observe(t, tier, 1.0, 1)
        t += busy_s
        p.observe(t, tier, 0.0, 0)  # idle starts
        t += gap
    p.observe(t, tier, 1.0, 1)
    return t


def test_histogram_percentiles_and_range() -> None:
    h = IdleHistogram(PrewarmConfig())
    for _ in range(20):
        h.add(15 * 60 + 5)  # all in the 15-minute bin
    h.add(5 * 3600)  # beyond the 4 h range
    assert h.count == 21 and h.out_of_range == 1
    assert h.percentile_s(5) == 15 * 60
    assert h.percentile_s(99) == 16 * 60
    ok, why = h.representative()
    assert ok, why
    with pytest.raises(ValueError):
        h.add(-1)


def test_not_representative_cases() -> None:
    cfg = PrewarmConfig()
    few = IdleHistogram(cfg)
    few.add(60)
    assert not few.representative()[0]
    # a few idle periods predict only when they are regular (within 3 adjacent bins)
    regular, irregular = IdleHistogram(cfg), IdleHistogram(cfg)
    for gap in (13 * 60 + 10, 14 * 60 + 5, 12 * 60 + 50):
        regular.add(gap)
    for gap in (60, 10 * 60, 100 * 60):
        irregular.add(gap)
    ok, why = regular.representative()
    assert ok and "regular" in why
    assert not irregular.representative()[0]
    spread = IdleHistogram(cfg)
    for i in range(240):  # one in every bin: CV 0
        spread.add(i * 60 + 1)
    ok, why = spread.representative()
    assert not ok and "CV" in why
    beyond = IdleHistogram(cfg)
    for _ in range(20):
        beyond.add(10 * 3600)
    assert not beyond.representative()[0]


def test_periodic_tier_unloads_then_prewarms_before_the_next_request() -> None:
    p = TierPrewarmer(["batch"])
    t = feed_idle_periods(p, "batch", [20 * 60 + 10] * 12)
    # a new idle period starts
    p.observe(t + 30, "batch", 0.0, 0)
    start = t + 30
    d = p.decide(start + 10, "batch", fixed_keep_alive_s=600, load_s=60, target_per_server=8, serving=1,
                 spec_standby=0, max_standby=2)  # fmt: skip
    assert d.mode == "histogram"
    # head: 5th pct = 20 min bin lower edge (1200 s) * 0.9 = 1080 s; tail 21 min * 1.1 = 1386 s
    assert d.keep_alive_s == 0.0 and d.warm_floor == 0  # unloaded phase
    d = p.decide(start + 1080 - 60 + 1, "batch", 600, 60, 8, 0, 0, 2)
    assert d.warm_floor == 1 and d.keep_alive_s == pytest.approx(1386.0)
    d = p.decide(start + 1400, "batch", 600, 60, 8, 1, 0, 2)
    assert d.warm_floor == 0 and d.keep_alive_s == pytest.approx(1386.0)


def test_short_gaps_keep_loaded_to_the_tail() -> None:
    p = TierPrewarmer(["chat"])
    t = feed_idle_periods(p, "chat", [30.0] * 15)  # gaps in the first bin: head 0
    p.observe(t + 5, "chat", 0.0, 0)
    d = p.decide(t + 10, "chat", 30, 60, 8, 1, 0, 2)
    assert d.mode == "histogram" and d.warm_floor == 0
    assert d.keep_alive_s == pytest.approx(66.0)  # bin edge 60 s * 1.1
    # kept loaded, never shorter than the spec's keep-alive (a longer gap than the few
    # seen would be a cold start the fixed keep-alive avoids)
    assert p.decide(t + 10, "chat", 600, 60, 8, 1, 0, 2).keep_alive_s == 600


def test_falls_back_to_fixed_keep_alive() -> None:
    p = TierPrewarmer(["chat"])
    feed_idle_periods(p, "chat", [100.0, 5000.0])
    d = p.decide(10_000, "chat", 600, 60, 8, 1, 0, 2)
    assert d.mode == "fixed" and d.keep_alive_s == 600 and d.warm_floor == 0
    assert "fixed keep-alive" in d.reason


def test_holt_forecast_follows_a_ramp_and_sizes_standby() -> None:
    h = HoltForecaster(0.5, 0.3)
    for i in range(60):
        h.observe(i * 2.0, i * 1.0)  # +0.5 concurrent per second
    assert h.forecast(60) > 59 + 20  # extrapolates the trend
    p = TierPrewarmer(["chat"])
    for i in range(60):
        p.observe(i * 2.0, "chat", i * 1.0, 5)
    for i in range(60, 150):
        p.observe(i * 2.0, "chat", i * 1.0, 5)
    # fed the 60 s averages once a window: it lags the ramp but still looks one load ahead
    d = p.decide(300.0, "chat", 600, 60, target_per_server=10, serving=8, spec_standby=0, max_standby=3)
    assert d.standby == 3 and d.forecast_concurrency > 100, d
    d = p.decide(120.0, "chat", 600, 60, target_per_server=10, serving=20, spec_standby=1, max_standby=3)
    assert d.standby == 1  # the spec's standby is the floor


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        PrewarmConfig(head_percentile=99, tail_percentile=5)
    with pytest.raises(ValueError):
        PrewarmConfig(bin_s=0)


def test_pauses_shorter_than_min_idle_are_not_idle_periods() -> None:
    p = TierPrewarmer(["chat"])
    feed_idle_periods(p, "chat", [10.0] * 12)
    assert p.histogram("chat").count == 0
    feed_idle_periods(p, "chat", [45.0] * 2)
    assert p.histogram("chat").count == 2


def test_a_burst_shorter_than_a_load_gets_no_standby() -> None:
    p = TierPrewarmer(["chat"])
    for i in range(60):
        p.observe(i * 2.0, "chat", 2.0, 1)
    for i in range(60, 63):  # 6 s at 20x the level
        p.observe(i * 2.0, "chat", 40.0, 20)
    d = p.decide(126.0, "chat", 600, 60, target_per_server=10, serving=1, spec_standby=0, max_standby=3)
    assert d.standby == 0, d
    raw = HoltForecaster(0.5, 0.3)  # what following each sample would have said
    for i in range(63):
        raw.observe(i * 2.0, 2.0 if i < 60 else 40.0)
    assert raw.forecast(60) > 30
