"""The SLO scan's floors skip only servers the full feasibility check would refuse.

``routing_feasibility.server_step`` caches, per server state, a first-token floor (the
estimate with the queued prompts alone) and the terms of lower bounds on the first-token
time and the prefill burst's lag with the request's prompt (``floors_refuse``); the scan
in ``routing_slo.decide_slo`` counts a server they refuse as a failed check without
calling ``feasible``. Two properties keep decisions exactly
what they were before the floors:

* a floor never refuses a server that ``feasible`` accepts (checked on random server
  states, prompts, budgets and slacks, including states near the boundary);
* the scan with the floors and the same scan with them switched off (every candidate
  through ``feasible``) return the same decision at every step of random request
  streams that mutate the fleet, with the default check budget and with tiny budgets
  (the skipped servers must be counted against ``max_checks`` and the per-level budget
  exactly as failed checks).
"""

from __future__ import annotations

import math
import random

import pytest

from kubetier.policy import routing_slo
from kubetier.policy.latency import list_profiles, load_profile
from kubetier.policy.routing import RoutingPolicy, ServerLoad, TierSLO
from kubetier.policy.routing_feasibility import FLOOR_MARGIN_S, feasible, floors_refuse, server_step
from kubetier.sim import native

pytestmark = pytest.mark.skipif(
    native.active_build() is not None, reason="switches the floors off through a module global (pure Python only)"
)

TIERS = [
    TierSLO("interactive", ttft_ms=400, tpot_ms=25, priority=100, mean_output_tokens=128),
    TierSLO("standard", ttft_ms=1500, tpot_ms=50, priority=50, mean_output_tokens=256),
    TierSLO("batch", ttft_ms=8000, tpot_ms=150, priority=10, mean_output_tokens=256, on_late="queue"),
]


def _fleet(rng: random.Random, n: int, track_lag: bool = True) -> tuple[RoutingPolicy, list[str]]:
    models = [load_profile(name) for name in sorted(list_profiles())]
    p = RoutingPolicy(TIERS, "slo", track_lag=track_lag)
    ids = []
    for k in range(n):
        sid = f"s{k:04d}"
        r = rng.randint(0, 120)
        p.upsert_server(
            ServerLoad(
                sid,
                rng.choice(TIERS).name,
                rng.choice(models),
                running=r,
                kv_tokens=r * rng.randint(0, 1500),
                queued_prefill_tokens=rng.choice([0, 0, 500, 3000, 20_000, 60_000]),
            )
        )
        ids.append(sid)
    return p, ids


@pytest.mark.parametrize("seed", range(4))
def test_floors_never_refuse_a_server_the_full_check_accepts(seed: int) -> None:
    rng = random.Random(seed)
    p, ids = _fleet(rng, 200)
    refused = burst_refused = accepted = 0
    for _ in range(4000):
        sid = rng.choice(ids)
        if rng.random() < 0.5:  # lag from reported chunks and iterations (ServerLag)
            r = rng.randint(1, 120)
            p.observe(sid, r, r * rng.randint(0, 1500), rng.choice([0, 700, 5000, 30_000]), rng.choice([1, 3, 50]))
        e = p._servers[sid]
        server_step(e)
        c = e.costs
        prompt = rng.choice([0, 1, 300, 2047, 2048, 2049, rng.randint(1, 40_000)])
        tpot = rng.choice([0.015, 0.026, 0.05, 0.158])
        burst = rng.choice([0.01, 0.1, 0.375, 2.0])
        # budgets around the floor itself, where rounding could matter
        floor = e.floor_s * c.scale
        budget = rng.choice([0.05, 0.25, 0.75, 4.0, floor, math.nextafter(floor, 0.0), floor + FLOOR_MARGIN_S])
        H = rng.choice([1, 128, 300])
        ok = feasible(e, prompt, H, budget, tpot, rng.choice([0.0, 5.0]), 0.05, burst, 128)
        accepted += ok
        assert c.floors_hold  # every shipped profile: chunk costs grow with their tokens
        if floors_refuse(e, prompt, budget + FLOOR_MARGIN_S, tpot, burst, False):
            refused += 1
            assert not ok, (sid, prompt, budget, floor)
        elif floors_refuse(e, prompt, budget + FLOOR_MARGIN_S, tpot, burst, True):
            burst_refused += 1
            assert not ok, (sid, prompt, tpot, burst, e.lag_s)
        # a late queueing request (no TTFT budget) is never refused by the floors
        assert not floors_refuse(e, prompt, math.inf, tpot, burst, True)
    # the property was exercised on both floors and on servers that pass
    assert refused > 200 and burst_refused > 50 and accepted > 100, (refused, burst_refused, accepted)


def _never(*_args: object) -> bool:
    return False


def _decide_without_floors(monkeypatch: pytest.MonkeyPatch, p: RoutingPolicy, tier: str, prompt: int, waited: float):
    with monkeypatch.context() as m:
        m.setattr(routing_slo, "floors_refuse", _never)  # every candidate through feasible()
        return p.decide(tier, prompt, waited)


@pytest.mark.parametrize(
    ("seed", "max_checks", "per_level"), [(0, 64, 8), (1, 64, 8), (2, 4, 2), (3, 9, 1), (4, 16, 3), (5, 64, 8)]
)
def test_scan_with_floors_equals_scan_without(
    monkeypatch: pytest.MonkeyPatch, seed: int, max_checks: int, per_level: int
) -> None:
    rng = random.Random(100 + seed)
    n = rng.choice([60, 300])
    with_floors, ids = _fleet(random.Random(seed), n, track_lag=seed % 2 == 0)
    without, _ = _fleet(random.Random(seed), n, track_lag=seed % 2 == 0)
    for p in (with_floors, without):
        p.max_checks = max_checks
        p.max_checks_per_level = per_level
    inflight: list[tuple[str, int]] = []
    compared = routed = 0
    for step in range(1500):
        op = rng.random()
        if op < 0.6:
            tier = rng.choice(TIERS).name
            prompt = rng.choice([0, 16, 300, 1500, rng.randint(1, 24_000)])
            waited = rng.choice([0.0, 0.0, 0.1, 1.0, 7.5])
            d = with_floors.decide(tier, prompt, waited)
            ref = _decide_without_floors(monkeypatch, without, tier, prompt, waited)
            assert (d.action, d.server_id, d.spilled, d.reason) == (
                ref.action,
                ref.server_id,
                ref.spilled,
                ref.reason,
            ), (
                seed,
                step,
            )
            compared += 1
            if d.server_id is not None:
                routed += 1
                for p in (with_floors, without):
                    p.on_admit(d.server_id, prompt, 256, tier=tier)
                inflight.append((d.server_id, prompt))
        elif op < 0.7 and inflight:
            sid, pr = inflight[rng.randrange(len(inflight))]
            for p in (with_floors, without):
                p.on_prefill_done(sid, pr)
        elif op < 0.85 and inflight:
            sid, pr = inflight.pop(rng.randrange(len(inflight)))
            out = rng.randint(0, 400)
            for p in (with_floors, without):
                p.on_finish(sid, pr, out)
        else:
            sid = rng.choice(ids)
            r = rng.randint(0, 150)
            kv = r * rng.randint(0, 1800)
            q = rng.choice([0, 300, 5000, 40_000])
            its = rng.choice([None, 1, 10, 200])
            for p in (with_floors, without):
                p.observe(sid, r, kv, q, its)
    assert compared > 700 and routed > 100, (compared, routed)
