"""One definition of SLO attainment (kubetier.policy.attainment), and the three places
that report it agree: the router's status counts, the operator's ModelService status
and the fleet simulator's summary. A tier that sheds load does not report 100 %."""

from __future__ import annotations

import math

import pytest

from kubetier.operator.modelservice.router_feed import attainment_from_status
from kubetier.policy.attainment import (
    Outcome,
    attainment_percent,
    is_judged,
    judged_requests,
    met_tier,
    token_due_s,
)
from kubetier.router.metrics import TierTally
from kubetier.sim.metrics import Collector, summarize


def test_only_completed_on_time_requests_meet_their_tier():
    assert met_tier(Outcome.COMPLETED, on_time=True)
    assert not met_tier(Outcome.COMPLETED, on_time=False)
    for outcome in (Outcome.REFUSED, Outcome.FAILED, Outcome.CANCELLED, Outcome.INVALID):
        assert not met_tier(outcome, on_time=True)


def test_refused_and_failed_requests_are_judged_cancelled_and_invalid_are_not():
    assert [o for o in Outcome if is_judged(o)] == [Outcome.COMPLETED, Outcome.REFUSED, Outcome.FAILED]
    assert judged_requests(completed=3, refused=2, failed=1) == 6


def test_attainment_percent_counts_refusals_and_failures_as_misses():
    assert attainment_percent(met=10, completed=10, refused=0, failed=0) == 100.0
    assert attainment_percent(met=10, completed=10, refused=30, failed=0) == 25.0
    assert attainment_percent(met=9, completed=10, refused=1, failed=2) == pytest.approx(100 * 9 / 13)
    assert attainment_percent(met=0, completed=0, refused=0, failed=0) is None
    assert attainment_percent(met=0, completed=0, refused=4, failed=0) == 0.0
    with pytest.raises(ValueError, match="cannot exceed"):
        attainment_percent(met=2, completed=1, refused=0, failed=0)
    with pytest.raises(ValueError, match=">= 0"):
        attainment_percent(met=0, completed=0, refused=-1, failed=0)


def test_token_deadlines():
    assert token_due_s(10.0, 0.3, 0.03, 0) == pytest.approx(10.3)
    assert token_due_s(10.0, 0.3, 0.03, 100) == pytest.approx(13.3)


def _sim_summary(met: int, late: int, refused: int):
    col = Collector(n_tiers=1)
    for _ in range(met):
        col.record(0, 0.1, 0.01, True, False, False, 0.0, 0)
    for _ in range(late):
        col.record(0, 2.0, 0.01, False, False, False, 0.0, 0)
    for _ in range(refused):
        col.record(0, math.inf, math.inf, False, True, False, 0.5, -1)
    (tier,) = summarize(col, ["t"], [300.0], [30.0], [90.0])
    return tier


@pytest.mark.parametrize("met, late, refused", [(10, 0, 30), (9, 1, 0), (5, 2, 3), (0, 0, 6)])
def test_router_operator_and_simulator_report_the_same_attainment(met, late, refused):
    expected = attainment_percent(met, met + late, refused, 0)
    # router: the per-tier tally behind /kubetier/status
    tally = TierTally(requests=met + late + refused, completed=met + late, slo_met=met, rejected=refused)
    counts = tally.counts()
    assert counts.attainment_percent == pytest.approx(expected, abs=0.005)
    # operator: status.tiers[].attainmentPercent from the router's document
    doc = {"models": {"m": {"tiers": {"t": counts.wire()}}}}
    assert attainment_from_status(doc, "m", min_requests=1) == {"t": pytest.approx(expected, abs=0.005)}
    # simulator: the run summary
    tier = _sim_summary(met, late, refused)
    assert tier.attainment_deadline == pytest.approx(expected)
    assert tier.rejected == refused


def test_a_tier_shedding_load_does_not_report_100_percent():
    # 10 requests served on time, 30 refused with 429: before this definition the router
    # left refusals out and reported 100 %.
    counts = TierTally(requests=40, completed=10, slo_met=10, rejected=30).counts()
    assert counts.attainment_percent == 25.0
    assert _sim_summary(10, 0, 30).attainment_deadline == 25.0
    assert not _sim_summary(10, 0, 30).meets_target
