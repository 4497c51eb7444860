"""The router feeds the online latency correction from the streams it relays.

A real router (in process, real HTTP on loopback) in front of a real engine simulator
that runs slower (or faster) than its profile: after a few dozen streams the router's
learned scale sits near the engine's true slowdown, and the routing policy's iteration
costs (the ones admission multiplies by) carry it.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
import uvloop
import yaml
from in_process import serving
from router_procs import free_port, stream_once, wait_http

from kubetier.policy.routing_costs import costs_for
from kubetier.router.app import Router
from kubetier.router.bench import flat_profile
from kubetier.router.config import parse_config
from kubetier.router.latency_feed import LatencyFeed


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


@contextlib.asynccontextmanager
async def router_for(engine_port: int, profile_path: str):
    cfg = {
        "models": [
            {
                "name": "m",
                "profile": profile_path,
                "tiers": [{"name": "t", "ttftMs": 5000, "tpotMs": 1000}],
                "servers": [{"url": f"http://127.0.0.1:{engine_port}", "tier": "t", "id": "e"}],
            }
        ]
    }
    router = Router(parse_config(cfg), scrape_interval_s=0.2)
    async with serving(router) as base:
        yield router, base


@pytest.mark.parametrize("slowdown", [1.5, 0.7])
async def test_learned_scale_converges_to_the_engines_true_speed(procs, tmp_path, slowdown):
    # Iterations of 80 ms (at the profile): the router's own few milliseconds of HTTP are
    # small beside them, so what the router observes is mostly the engine.
    profile = tmp_path / "flat80.yaml"
    profile.write_text(yaml.safe_dump(flat_profile(80.0)))
    port = free_port()
    procs.engine(port, "m", str(profile), "--slowdown", str(slowdown))
    wait_http(f"http://127.0.0.1:{port}/health", 30)
    async with router_for(port, str(profile)) as (router, base):
        fleet = router.fleets["m"]
        feed: LatencyFeed = fleet.latency
        assert feed.scale == 1.0  # the profile, before any observation
        await asyncio.sleep(0.5)  # first health check
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(8):  # 32 streams, 4 at a time
                got = await asyncio.gather(*(stream_once(client, base, 12) for _ in range(4)))
                assert got == [12] * 4
        await asyncio.sleep(0.5)  # a last scrape
        # The engine exports its own per-token timing: the correction learns from that
        # (scrape intervals), never from the router's clock (fleet._learn_from_engine).
        assert fleet.engine_timing_observations >= 5
        assert feed.decode_observations == 0 and feed.first_token_observations == 0
        # Converged near the engine's true speed (timing on a shared 2-core machine adds a
        # little: the bound is 15%), and on the right side of the profile.
        assert abs(feed.scale - slowdown) / slowdown < 0.15, feed.scale
        assert (feed.scale > 1.2) if slowdown > 1 else (feed.scale < 0.85)
        # What admission uses: the model's shared iteration costs carry the correction.
        assert costs_for(fleet.spec.profile).scale == feed.scale


async def test_streams_that_failed_or_resumed_teach_nothing_and_whole_answers_neither():
    """Unit level: the feed's gates (no first-token observation with a queue ahead, none
    for short streams' decode) and its bounded effect."""
    from kubetier.policy.latency import LatencyModel
    from kubetier.policy.routing import RoutingPolicy, ServerLoad, TierSLO

    model = LatencyModel.from_dict(flat_profile(40.0))
    policy = RoutingPolicy([TierSLO("t", ttft_ms=5000, tpot_ms=1000, priority=1, mean_output_tokens=16)])
    policy.upsert_server(ServerLoad("e", "t", model))
    feed = LatencyFeed(policy, model)
    # A queue of other prompts ahead: the first token is not learned; 4 tokens: no decode.
    feed.stream_done("e", (3, 500, 400), 64, 1.0, 1.5, 1.6, 4)
    assert feed.first_token_observations == 0 and feed.decode_observations == 0
    # Wild observations (20x slower) are clipped: the scale stays within its bounds.
    for _ in range(40):
        feed.stream_done("e", (1, 64, 64), 64, 1.0, 1.0 + 20 * 0.0408, 1.0 + 20 * 0.0408 + 20 * 0.04 * 15, 16)
    assert 1.0 < feed.scale <= 2.0
