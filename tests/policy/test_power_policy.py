"""POLCA two-threshold policy: one test per rule, values computable by hand.

Domain: budget 1000 W, thresholds 80/90/97 %, servers of 100 W maximum.
"""

from __future__ import annotations

import pytest

from kubetier.policy.power import (
    PowerPolicyConfig,
    PowerState,
    PowerWindow,
    ServerReading,
    ThresholdClock,
    cap_order,
    decide,
    domain_watts,
    nominal_servers,
    servers_allowed,
)

CFG = PowerPolicyConfig(
    budget_watts=1000,
    cap_threshold=0.90,
    uncap_threshold=0.80,
    hard_threshold=0.97,
    cap_fraction=0.6,
    brake_fraction=0.4,
    stale_after_s=5,
    escalate_every_s=2,
    lift_after_s=10,
)

# tier name -> (priority, tpot ms)
TIERS = {"batch": (0, 200), "standard": (0, 100), "interactive": (10, 30)}


def fleet(watts_each: float, now: float = 100.0, per_tier: int = 3, **over: float | None) -> list[ServerReading]:
    out = []
    for tier, (prio, tpot) in TIERS.items():
        for i in range(per_tier):
            name = f"{tier}-{i}"
            out.append(
                ServerReading(
                    server=name,
                    tier=tier,
                    tier_priority=prio,
                    tier_tpot_ms=tpot,
                    max_watts=100,
                    watts=over.get(name, watts_each),
                    measured_at=now,
                )
            )
    return out


def capped_tiers(decision) -> set[str]:
    return {s.rsplit("-", 1)[0] for s, c in decision.caps.items() if c is not None}


def test_order_lowest_priority_then_loosest_tpot_first():
    groups = cap_order(fleet(50))
    # batch (prio 0, 200 ms) before standard (prio 0, 100 ms) before interactive (prio 10).
    assert groups == ((0, -200.0), (0, -100.0), (10, -30.0))


def test_below_cap_threshold_nothing_is_capped():
    d = decide(fleet(95), PowerState(), CFG, now=100)  # 9 x 95 = 855 W = 85.5 %
    assert d.domain_watts == pytest.approx(855)
    assert d.level == "normal"
    assert capped_tiers(d) == set()


def test_above_cap_threshold_caps_lowest_priority_loosest_tier_first():
    d = decide(fleet(100, per_tier=3), PowerState(), PowerPolicyConfig(budget_watts=950), now=100)
    assert d.domain_watts == 900  # 94.7 % of 950: above 90, below 97
    assert d.level == "capping"
    assert capped_tiers(d) == {"batch"}
    assert d.caps["batch-0"] == pytest.approx(100 * 0.6)


def test_escalation_waits_for_caps_to_show_then_caps_next_group_never_the_tightest():
    cfg = PowerPolicyConfig(budget_watts=950, escalate_every_s=2)
    d1 = decide(fleet(100, now=100), PowerState(), cfg, now=100)
    assert capped_tiers(d1) == {"batch"}
    d2 = decide(fleet(100, now=101), d1.state, cfg, now=101)  # too soon
    assert capped_tiers(d2) == {"batch"}
    d3 = decide(fleet(100, now=102), d2.state, cfg, now=102)
    assert capped_tiers(d3) == {"batch", "standard"}
    d4 = decide(fleet(100, now=110), d3.state, cfg, now=110)
    # Still hot but below the hard threshold: the tightest tier is never capped here.
    assert capped_tiers(d4) == {"batch", "standard"}
    assert d4.state.brake_events == 0


def test_above_hard_threshold_caps_everyone_to_brake_level_and_counts_one_event():
    d = decide(fleet(110), PowerState(), CFG, now=100)  # 990 W = 99 %
    assert d.level == "braking"
    assert capped_tiers(d) == {"batch", "standard", "interactive"}
    assert d.caps["interactive-0"] == pytest.approx(40)
    assert d.state.brake_events == 1
    d2 = decide(fleet(110, now=101), d.state, CFG, now=101)
    assert d2.state.brake_events == 1  # still the same event


def test_brake_releases_below_cap_threshold_group_caps_stay():
    d = decide(fleet(110), PowerState(), CFG, now=100)
    d2 = decide(fleet(85, now=101), d.state, CFG, now=101)  # 765 W = 76.5 %
    assert d2.level == "capping"
    assert capped_tiers(d2) == {"batch", "standard"}
    assert d2.caps["interactive-0"] is None


def test_caps_lift_with_hysteresis_most_protected_group_first():
    state = PowerState(capped_groups=2, changed_at=0.0)
    # Between thresholds: hold.
    d = decide(fleet(94.4, now=100), state, CFG, now=100)  # 849.6 W: between 80 and 90
    assert capped_tiers(d) == {"batch", "standard"}
    assert d.state.below_uncap_since is None
    # Below 80 % but not for long enough.
    d = decide(fleet(70, now=101), d.state, CFG, now=101)
    assert capped_tiers(d) == {"batch", "standard"}
    d = decide(fleet(70, now=110), d.state, CFG, now=110)
    assert capped_tiers(d) == {"batch", "standard"}
    d = decide(fleet(70, now=111), d.state, CFG, now=111)  # 10 s below: lift standard first
    assert capped_tiers(d) == {"batch"}
    d = decide(fleet(70, now=115), d.state, CFG, now=115)  # the next lift waits again
    assert capped_tiers(d) == {"batch"}
    d = decide(fleet(70, now=121), d.state, CFG, now=121)
    assert capped_tiers(d) == set()
    assert d.level == "normal"


def test_a_rise_between_thresholds_resets_the_lift_timer():
    state = PowerState(capped_groups=1, changed_at=0.0)
    d = decide(fleet(70, now=100), state, CFG, now=100)
    d = decide(fleet(94.4, now=105), d.state, CFG, now=105)  # back between thresholds
    d = decide(fleet(70, now=111), d.state, CFG, now=111)  # below again, timer restarts
    assert capped_tiers(d) == {"batch"}
    d = decide(fleet(70, now=121), d.state, CFG, now=121)
    assert capped_tiers(d) == set()


def test_stale_telemetry_counts_a_server_at_its_maximum():
    readings = fleet(50, now=100)
    # batch-0 last reported 6 s ago (stale after 5 s), standard-0 never reported.
    readings[0] = ServerReading("batch-0", "batch", 0, 200, 100, watts=10, measured_at=94)
    readings[3] = ServerReading("standard-0", "standard", 0, 100, 100)
    watts, stale = domain_watts(readings, now=100, stale_after_s=5)
    assert set(stale) == {"batch-0", "standard-0"}
    assert watts == 7 * 50 + 2 * 100


def test_missing_agents_make_the_controller_cap():
    # Every server idle (30 W) but five stopped reporting: counted at 100 W each.
    readings = [
        ServerReading(r.server, r.tier, r.tier_priority, r.tier_tpot_ms, r.max_watts, 30, 0 if i < 5 else 100)
        for i, r in enumerate(fleet(30))
    ]
    d = decide(readings, PowerState(), CFG, now=100)  # 5 x 100 + 4 x 30 = 620 W: fine
    assert d.level == "normal"
    readings = [
        ServerReading(r.server, r.tier, r.tier_priority, r.tier_tpot_ms, r.max_watts, 30, 0 if i < 9 else 100)
        for i, r in enumerate(fleet(30))
    ]
    d = decide(readings, PowerState(), CFG, now=100)  # 9 x 100 = 900 W: 90 % is not above 90 %
    assert d.level == "normal"
    readings.append(ServerReading("batch-extra", "batch", 0, 200, 100))
    d = decide(readings, PowerState(), CFG, now=100)  # 1000 W: brake
    assert d.level == "braking"
    assert len(d.stale) == 10


def test_uniform_baseline_caps_everyone_alike_at_the_cap_threshold():
    cfg = PowerPolicyConfig(budget_watts=950, uniform=True)
    d = decide(fleet(100), PowerState(), cfg, now=100)
    assert capped_tiers(d) == {"batch", "standard", "interactive"}
    assert len(set(d.caps.values())) == 1


def test_single_group_domain_caps_it_at_the_cap_threshold():
    readings = [r for r in fleet(100) if r.tier == "interactive"]
    d = decide(readings, PowerState(), PowerPolicyConfig(budget_watts=320), now=100)  # 300/320 = 93.75 %
    assert capped_tiers(d) == {"interactive"}


def test_config_refuses_bad_thresholds_and_fractions():
    with pytest.raises(ValueError, match="thresholds"):
        PowerPolicyConfig(budget_watts=1000, uncap_threshold=0.9, cap_threshold=0.9)
    with pytest.raises(ValueError, match="brake_fraction"):
        PowerPolicyConfig(budget_watts=1000, cap_fraction=0.5, brake_fraction=0.6)
    with pytest.raises(ValueError, match="budget_watts"):
        PowerPolicyConfig(budget_watts=0)


def test_threshold_clock_accounts_intervals_at_the_previous_draw():
    clock = ThresholdClock()
    clock.observe(0, 850, CFG)
    clock.observe(10, 950, CFG)  # 0-10 s at 85 %: nothing
    clock.observe(12, 990, CFG)  # 10-12 s at 95 %: above cap
    clock.observe(13, 1010, CFG)  # 12-13 s at 99 %: above cap and hard
    clock.observe(15, 500, CFG)  # 13-15 s at 101 %: above all three
    assert clock.above_cap_s == pytest.approx(5)
    assert clock.above_hard_s == pytest.approx(3)
    assert clock.above_budget_s == pytest.approx(2)


def test_power_window_p99_forgets_old_samples():
    w = PowerWindow(window_s=60)
    for t in range(100):
        w.add(float(t), 1000.0 if t < 30 else float(t))
    assert len(w) == 61  # samples 39..99
    assert w.percentile(0.99) == 99.0
    assert w.percentile(0.0) == 39.0
    assert PowerWindow(1).percentile(0.99) is None


def test_oversubscription_nominal_and_ratio_ceiling():
    assert nominal_servers(7000, 700) == 10
    # No measurement yet: nominal only.
    assert servers_allowed(7000, 700, 1.3, servers_now=10, p99_domain_watts=None, cap_threshold=0.9) == 10
    # Light measured draw (p99 300 W/server): the ratio ceiling binds, 13.
    assert servers_allowed(7000, 700, 1.3, servers_now=10, p99_domain_watts=3000, cap_threshold=0.9) == 13
    # Heavy draw (p99 560 W/server): 0.9 x 7000 / 560 = 11.25 -> 11.
    assert servers_allowed(7000, 700, 1.3, servers_now=10, p99_domain_watts=5600, cap_threshold=0.9) == 11
    # Hotter than nominal can hold: never below nominal (the budget holds them at TDP).
    assert servers_allowed(7000, 700, 1.3, servers_now=10, p99_domain_watts=6900, cap_threshold=0.9) == 10
    with pytest.raises(ValueError, match="ratio"):
        servers_allowed(7000, 700, 0.9, servers_now=10, p99_domain_watts=3000, cap_threshold=0.9)


def test_trend_lookahead_acts_on_a_rising_draw_before_it_crosses():
    from dataclasses import replace

    ahead = replace(CFG, trend_lookahead_s=1.0)
    # 9 x 80 W = 72 %, then 0.5 s later 9 x 95 W = 85.5 %: rising 27 %/s.
    s0 = decide(fleet(80, now=100), PowerState(), ahead, now=100).state
    assert s0.last_watts == pytest.approx(720) and s0.last_at == 100
    d = decide(fleet(95, now=100.5), s0, replace(ahead, trend_brakes=True), now=100.5)
    # Projected 85.5 % + 27 % = 112.5 %: with trend_brakes, above the hard threshold: brake now.
    assert d.level == "braking" and d.state.brake_events == 1 and "rising to" in d.reason
    # Without trend_brakes the projection only adds a group cap (the brake waits for the draw).
    d = decide(fleet(95, now=100.5), s0, ahead, now=100.5)
    assert d.level == "capping" and capped_tiers(d) == {"batch"} and d.state.brake_events == 0
    # Without the lookahead the same readings do nothing (below the cap threshold).
    plain = decide(fleet(95, now=100.5), decide(fleet(80, now=100), PowerState(), CFG, now=100).state, CFG, now=100.5)
    assert plain.level == "normal"
    # A falling draw projects nothing: 85.5 % after 88.2 % stays below the cap threshold.
    s1 = decide(fleet(98, now=200), PowerState(), replace(ahead, cap_threshold=0.9), now=200).state
    s1 = PowerState(last_watts=s1.last_watts, last_at=s1.last_at)
    d = decide(fleet(95, now=200.5), s1, ahead, now=200.5)
    assert d.level == "normal"
    # A small rise caps the low group instead of braking: 85.5 % -> 86.4 % in 0.5 s, 3 s ahead 91.8 %.
    s2 = PowerState(last_watts=855.0, last_at=300.0)
    d = decide(fleet(96, now=300.5), s2, replace(ahead, trend_lookahead_s=3.0), now=300.5)
    assert d.level == "capping" and capped_tiers(d) == {"batch"}
    with pytest.raises(ValueError):
        replace(CFG, trend_lookahead_s=-1)
