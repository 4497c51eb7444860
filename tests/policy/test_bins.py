"""Dynamic bins of a shared pool (kubetier.policy.bins): which bin gives a server, which
bin a joining server starts in, how minimums are restored; and the routing policy
moving a server only within the per-tier limits."""

from __future__ import annotations

import random

import pytest

import kubetier.policy.routing_slo as routing_slo
from kubetier.policy import bins
from kubetier.policy.bins import BinCount, BinLimits, donor_bin, join_bin, refill_move
from kubetier.policy.routing import RoutingPolicy, ServerLoad, TierSLO
from linear_latency_model import MODEL

TIGHT = TierSLO("tight", ttft_ms=500, tpot_ms=30, priority=100, mean_output_tokens=100)
LOOSE = TierSLO("loose", ttft_ms=2000, tpot_ms=120, priority=10, mean_output_tokens=100)


def test_donor_is_the_bin_with_most_idle_servers_keeping_one_idle():
    rows = [BinCount("tight", 2, 0, 30), BinCount("mid", 3, 2, 60), BinCount("loose", 4, 3, 120)]
    assert donor_bin("tight", rows) == "loose"
    # one idle server is kept for the donor's own next burst: no donor with a single idle
    assert donor_bin("tight", [BinCount("tight", 2, 0, 30), BinCount("loose", 4, 1, 120)]) is None
    # equal idle counts: the looser TPOT gives (the tighter capacity is scarcer)
    rows = [BinCount("tight", 1, 0, 30), BinCount("mid", 3, 2, 60), BinCount("loose", 3, 2, 120)]
    assert donor_bin("tight", rows) == "loose"
    # the target itself never donates
    assert donor_bin("loose", rows) == "mid"


def test_donor_respects_minimum_and_target_maximum():
    rows = [BinCount("tight", 2, 0, 30), BinCount("loose", 3, 3, 120)]
    assert donor_bin("tight", rows, {"loose": BinLimits(min_servers=3)}) is None
    assert donor_bin("tight", rows, {"loose": BinLimits(min_servers=2)}) == "loose"
    assert donor_bin("tight", rows, {"tight": BinLimits(max_servers=2)}) is None
    assert donor_bin("tight", rows, {"tight": BinLimits(max_servers=3)}) == "loose"


def test_join_fills_minimums_first_then_the_emptiest_bin_below_its_maximum():
    order = ["tight", "loose"]
    lim = {"tight": BinLimits(1, 3), "loose": BinLimits(2, 3)}
    assert join_bin({}, order, lim) == "loose"  # furthest below its minimum (2 short)
    assert join_bin({"loose": 1}, order, lim) == "tight"  # both 1 short: first listed
    assert join_bin({"tight": 1, "loose": 2}, order, lim) == "tight"  # fewest
    assert join_bin({"tight": 3, "loose": 2}, order, lim) == "loose"  # tight is full
    assert join_bin({"tight": 3, "loose": 3}, order, lim) == "tight"  # all full: first tier
    with pytest.raises(ValueError):
        join_bin({}, [], lim)


def test_refill_moves_an_idle_server_into_a_bin_below_its_minimum():
    lim = {"tight": BinLimits(2), "loose": BinLimits(1)}
    assert refill_move([BinCount("tight", 1, 0, 30), BinCount("loose", 3, 1, 120)], lim) == ("loose", "tight")
    # the donor must stay at or above its own minimum and have an idle server
    assert refill_move([BinCount("tight", 1, 0, 30), BinCount("loose", 1, 1, 120)], lim) is None
    assert refill_move([BinCount("tight", 1, 0, 30), BinCount("loose", 3, 0, 120)], lim) is None
    assert refill_move([BinCount("tight", 2, 0, 30), BinCount("loose", 1, 1, 120)], lim) is None


def test_limits_are_checked():
    with pytest.raises(ValueError):
        BinLimits(min_servers=-1)
    with pytest.raises(ValueError):
        BinLimits(min_servers=3, max_servers=2)


def _pool(limits=None) -> RoutingPolicy:
    p = RoutingPolicy(
        [TIGHT, LOOSE], rng=random.Random(1), rebin_idle=True, bin_limits=limits, host_probe_prompt_tokens=500
    )
    p.upsert_server(ServerLoad("t1", "tight", MODEL, running=100))  # full (maxNumSeqs 100)
    for sid in ("l1", "l2", "l3"):
        p.upsert_server(ServerLoad(sid, "loose", MODEL))
    return p


def test_policy_moves_an_idle_server_to_the_bin_that_needs_it():
    p = _pool()
    d = p.decide("tight", 100, 0.0)
    assert (d.action, d.reason) == ("route", "rebin")
    moved = p.server(d.server_id)
    assert moved is not None and moved.tier == "tight"
    assert sorted(s.tier for s in p.servers()) == ["loose", "loose", "tight", "tight"]


def test_policy_keeps_the_donor_minimum_and_the_target_maximum():
    d = _pool({"loose": BinLimits(min_servers=3)}).decide("tight", 100, 0.0)
    assert d.action == "wait"
    d = _pool({"tight": BinLimits(max_servers=1)}).decide("tight", 100, 0.0)
    assert d.action == "wait"
    p = _pool({"loose": BinLimits(min_servers=2), "tight": BinLimits(max_servers=2)})
    d = p.decide("tight", 100, 0.0)
    assert d.reason == "rebin" and d.server_id is not None
    p.observe(d.server_id, 100, 0, 0)
    # the moved server is full now; loose is at its minimum and tight at its maximum
    assert p.decide("tight", 100, 0.0).action == "wait"
    assert [s.tier for s in p.servers()].count("loose") == 2


def test_simulator_and_router_share_the_move_rule():
    # The simulator's and the router's routing policy rebin through routing_slo, which
    # asks kubetier.policy.bins: one function, not a copy.
    assert routing_slo.donor_bin is bins.donor_bin


def _first_wave_donor(target: str, rows: list[BinCount]) -> str | None:
    """The simulator's donor rule before kubetier.policy.bins (no limits), as it was
    written in routing_slo.rebin_idle_server: the reference the new function must match."""
    best: BinCount | None = None
    best_idle = 1
    for b in rows:
        if b.tier == target:
            continue
        if b.idle > best_idle or (b.idle == best_idle and best is not None and b.idle > 1 and b.tpot_ms > best.tpot_ms):
            best, best_idle = b, b.idle
    return best.tier if best is not None else None


def test_without_limits_the_donor_is_the_simulators_first_wave_choice():
    rng = random.Random(7)
    for _ in range(5000):
        n = rng.randint(1, 5)
        tpots = rng.sample([20.0, 30.0, 60.0, 100.0, 120.0, 200.0], n)
        rows = []
        for i in range(n):
            servers = rng.randint(0, 6)
            rows.append(BinCount(f"t{i}", servers, rng.randint(0, servers), tpots[i]))
        target = f"t{rng.randrange(n)}"
        assert donor_bin(target, rows) == _first_wave_donor(target, rows), (target, rows)


def test_may_move_checks_both_limits():
    lim = {"tight": BinLimits(0, 2), "loose": BinLimits(1)}
    assert bins.may_move("loose", 2, "tight", 1, lim)
    assert not bins.may_move("loose", 1, "tight", 1, lim)  # loose at its minimum
    assert not bins.may_move("loose", 2, "tight", 2, lim)  # tight at its maximum
    assert bins.may_move("loose", 1, "tight", 5)  # no limits


MID = TierSLO("mid", ttft_ms=1000, tpot_ms=60, priority=50, mean_output_tokens=100)


def test_no_decision_takes_a_bin_outside_its_limits():
    """Whatever rule moves a server (the idle rebin, or any later one that calls
    may_move), a long random run of decisions keeps every bin within its limits."""
    limits = {"tight": BinLimits(0, 3), "mid": BinLimits(1, 3), "loose": BinLimits(2)}
    rng = random.Random(3)
    p = RoutingPolicy([TIGHT, MID, LOOSE], rng=random.Random(1), rebin_idle=True, bin_limits=limits)
    start = ["tight", "tight", "mid", "mid", "loose", "loose", "loose"]
    for i, tier in enumerate(start):
        p.upsert_server(ServerLoad(f"s{i}", tier, MODEL))
    moves = 0
    for _ in range(2000):
        sid = f"s{rng.randrange(len(start))}"
        if rng.random() < 0.5:
            p.observe(sid, rng.choice([0, 0, 0, 5, 50, 100]), 0, 0)
            continue
        before = {s.server_id: s.tier for s in p.servers()}
        d = p.decide(rng.choice(["tight", "mid", "loose"]), rng.choice([10, 200, 2000]), 0.0)
        if d.action == "route" and d.server_id is not None:
            p.on_admit(d.server_id, 10, 100)
        moves += sum(before[s.server_id] != s.tier for s in p.servers())
        counts = {t: 0 for t in limits}
        for s in p.servers():
            counts[s.tier] += 1
        for t, lim in limits.items():
            assert lim.min_servers <= counts[t] and (lim.max_servers is None or counts[t] <= lim.max_servers), counts
    assert moves > 0  # the run did exercise moves
