"""A pod under a preemption notice: discovery marks it draining with the deadline, and the
fleet moves its remaining streams shortly before that deadline (token-level resume)."""

import asyncio
import time

from test_router_parts import _pod, _routing_cm

from kubetier.api.labels import PREEMPTION_DEADLINE_ANNOTATION
from kubetier.policy.latency import load_profile
from kubetier.policy.routing import TierSLO
from kubetier.policy.spot import rfc3339
from kubetier.router.config import ModelSpec, ServerSpec
from kubetier.router.discovery import build_config, preemption_deadline
from kubetier.router.fleet import LEAVE_MARGIN_S, ModelFleet
from kubetier.router.metrics import RouterMetrics


def test_discovery_reads_the_deadline_and_drains():
    noticed = _pod("p1", "interactive")
    noticed["metadata"]["annotations"][PREEMPTION_DEADLINE_ANNOTATION] = rfc3339(1_800_000_030)
    config = build_config([_routing_cm()], [noticed, _pod("p2", "interactive")], {})
    servers = {s.server_id: s for s in config.models["llama"].servers}
    assert servers["team-a/p1"].draining and servers["team-a/p1"].leave_by == 1_800_000_030
    assert not servers["team-a/p2"].draining and servers["team-a/p2"].leave_by is None
    assert preemption_deadline({PREEMPTION_DEADLINE_ANNOTATION: "not a time"}) is None


async def test_streams_move_shortly_before_the_deadline_and_not_before():
    spec = ModelSpec(
        "m",
        load_profile("llama-3.1-8b-h100"),
        [TierSLO("t", ttft_ms=400, tpot_ms=100, priority=1, mean_output_tokens=16)],
        [ServerSpec("s1", "127.0.0.1", 9, "t"), ServerSpec("s2", "127.0.0.1", 9, "t")],
    )
    fleet = ModelFleet(spec, RouterMetrics("test"))
    cut: list[str] = []
    fleet.track_stream("s1", cut.append)
    fleet.track_stream("s2", lambda reason: cut.append("s2:" + reason))
    deadline = time.time() + LEAVE_MARGIN_S + 0.3
    fleet.set_servers(
        [ServerSpec("s1", "127.0.0.1", 9, "t", draining=True, leave_by=deadline), ServerSpec("s2", "127.0.0.1", 9, "t")]
    )
    await asyncio.sleep(0.1)
    assert cut == []  # still in the window: the stream may finish where it is
    await asyncio.sleep(0.5)
    assert cut == ["preemption deadline"]  # only s1's stream moved
    # Seeing the same notice again schedules nothing twice.
    fleet.set_servers(
        [ServerSpec("s1", "127.0.0.1", 9, "t", draining=True, leave_by=deadline), ServerSpec("s2", "127.0.0.1", 9, "t")]
    )
    assert len(fleet._leaving) == 1


async def test_deadline_aware_draining_admits_until_admit_until_then_stops():
    from kubetier.api.labels import ADMIT_UNTIL_ANNOTATION

    noticed = _pod("p1", "interactive")
    noticed["metadata"]["annotations"][PREEMPTION_DEADLINE_ANNOTATION] = rfc3339(1_800_000_030)
    noticed["metadata"]["annotations"][ADMIT_UNTIL_ANNOTATION] = rfc3339(1_800_000_010)
    [server] = [s for s in build_config([_routing_cm()], [noticed], {}).models["llama"].servers]
    assert server.draining and server.admit_until == 1_800_000_010

    spec = ModelSpec(
        "m",
        load_profile("llama-3.1-8b-h100"),
        [TierSLO("t", ttft_ms=400, tpot_ms=100, priority=1, mean_output_tokens=16)],
        [ServerSpec("s1", "127.0.0.1", 9, "t")],
    )
    fleet = ModelFleet(spec, RouterMetrics("test"))
    now = time.time()
    fleet.set_servers([ServerSpec("s1", "127.0.0.1", 9, "t", draining=True, leave_by=now + 30, admit_until=now + 0.3)])
    assert fleet.can_serve("t")  # still admitting: its requests finish before the deadline
    await asyncio.sleep(0.5)
    assert not fleet.can_serve("t")  # admit_until passed: no new requests
    # without admit_until a noticed server takes nothing from the notice on
    fleet.set_servers([ServerSpec("s1", "127.0.0.1", 9, "t", draining=True, leave_by=now + 30)])
    assert not fleet.can_serve("t")


def test_a_long_request_of_a_looser_tier_skips_a_noticed_server_a_short_one_uses_it():
    tiers = [
        TierSLO("tight", ttft_ms=400, tpot_ms=20, priority=2, mean_output_tokens=16),  # long request 1.0 s
        TierSLO("loose", ttft_ms=2000, tpot_ms=200, priority=1, mean_output_tokens=100),  # 41.8 s
    ]
    spec = ModelSpec("m", load_profile("llama-3.1-8b-h100"), tiers, [])
    fleet = ModelFleet(spec, RouterMetrics("test"))
    now = time.time()
    fleet.set_servers(
        [ServerSpec("s1", "127.0.0.1", 9, "tight", draining=True, leave_by=now + 30, admit_until=now + 20)]
    )
    assert fleet._too_long_for_notice("tight") == []
    assert fleet._too_long_for_notice("loose") == ["s1"]
    assert fleet._decide("tight", 100, fleet.clock(), frozenset()).server_id == "s1"
    assert fleet._decide("loose", 100, fleet.clock(), frozenset()).action != "route"
    # the hidden server is back for the next decision
    assert fleet._decide("tight", 100, fleet.clock(), frozenset()).server_id == "s1"
