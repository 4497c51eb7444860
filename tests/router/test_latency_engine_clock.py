"""The latency correction learns the engines' speed from the engines' own clock, not the
router's: a router short of CPU must not take its own lag for slow engines.

At 1,000 streams on the shared 2-core rig the router timed first tokens at 5-25x what
the engines measured themselves; fed those timings, the correction climbed to its 2.0
bound, the interactive tier (a TPOT 1.6x the engines' step) had no feasible server and
its requests waited and were refused (429) while the same engines, driven directly,
met every target (docs/router.md, "The router learned its own lag").

Here: a real engine simulator running exactly at its profile (40 ms per token), a real
router in process on loopback that spends 150 ms of its own on each request before the
engine sees it (as a router starved of its core does), and a tier whose TPOT is 1.3x the
engine's step. After 20 streams relayed through that router, the learned correction
must still be near 1 and the tier still routable. With the router's own stream timings
as the teacher (the old feed; ``KUBETIER_TEST_OLD_FEED=1`` runs the test that way, and it
fails) every first token counted as 2x late and the tier was held.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import httpx
import pytest
import uvloop
import yaml
from in_process import serving
from router_procs import free_port, stream_once, wait_http

from kubetier.router.app import Router
from kubetier.router.bench import flat_profile
from kubetier.router.config import parse_config
from kubetier.router.fleet import EngineTiming, parse_engine_timing


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


TOKEN_MS = 40.0


@contextlib.asynccontextmanager
async def lagging_router(engine_port: int, profile_path: str, lag_s: float):
    """A router whose path to the engine takes ``lag_s`` of its own per request before the
    engine sees it (what a router starved of its core spends sending a request and
    reading the answer); its health checks and scrapes are not held up."""
    cfg = {
        "models": [
            {
                "name": "m",
                "profile": profile_path,
                # TPOT 1.3x the engine's step: feasible while the correction stays under 1.3
                "tiers": [{"name": "tight", "ttftMs": 5000, "tpotMs": round(1.3 * TOKEN_MS), "onLate": "queue"}],
                "servers": [{"url": f"http://127.0.0.1:{engine_port}", "tier": "tight", "id": "e"}],
            }
        ]
    }
    router = Router(parse_config(cfg), scrape_interval_s=0.2)
    pool = router.fleets["m"].upstreams["e"].pool
    send = pool.request

    async def late_request(method, path, *args, **kwargs):
        if method == "POST":
            await asyncio.sleep(lag_s)
        return await send(method, path, *args, **kwargs)

    pool.request = late_request  # type: ignore[method-assign]
    async with serving(router) as base:
        yield router, base


async def test_a_lagging_router_does_not_learn_its_own_lag_as_slow_engines(procs, tmp_path):
    profile = tmp_path / "flat40.yaml"
    profile.write_text(yaml.safe_dump(flat_profile(TOKEN_MS)))
    port = free_port()
    procs.engine(port, "m", str(profile))
    wait_http(f"http://127.0.0.1:{port}/health", 30)
    async with lagging_router(port, str(profile), lag_s=0.15) as (router, base):
        fleet = router.fleets["m"]
        if os.environ.get("KUBETIER_TEST_OLD_FEED"):  # the old teacher, to see this test fail
            fleet._learn_from_engine = lambda sid, up, now: setattr(up, "engine_timing", None)  # type: ignore[method-assign]
        await asyncio.sleep(0.5)  # first health checks
        # A held request would wait for its queue deadline: 10 s is plenty for 10 tokens.
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(20):  # one at a time: every first token is one the old feed learned from
                assert await stream_once(client, base, 10) == 10
        await asyncio.sleep(0.6)  # a last scrape or two
        # The engine's own per-token timing taught the correction...
        # (at least the learner's min_obs: the scale below is a learned one, not the prior)
        assert fleet.engine_timing_observations >= fleet.latency.learner.min_obs
        assert fleet.latency.decode_observations == 0 and fleet.latency.first_token_observations == 0
        # ...so it sits near the engine's true speed (the profile's), not the router's lag,
        scale = fleet.latency.scale
        assert 0.85 <= scale <= 1.2, scale
        # and the tier whose TPOT the engine does meet is still routed, not held.
        d = fleet.policy.decide("tight", 64, 0.0)
        assert d.action == "route", d
        status = router.status()["models"]["m"]
        assert status["latencyScale"] == scale
        assert status["latencyEngineObservations"] == fleet.engine_timing_observations
        assert status["decisions"]["tight"]["outcomes"].get("route/own-bin", 0) >= 20


async def test_stream_timings_still_teach_when_the_engine_exports_no_timing(procs, tmp_path):
    """An engine without a per-token histogram (an older or other server): the router's
    own timing of the streams it relays is then the only teacher, as before."""
    profile = tmp_path / "flat40.yaml"
    profile.write_text(yaml.safe_dump(flat_profile(TOKEN_MS)))
    port = free_port()
    procs.engine(port, "m", str(profile))
    wait_http(f"http://127.0.0.1:{port}/health", 30)
    async with lagging_router(port, str(profile), lag_s=0.0) as (router, base):
        fleet = router.fleets["m"]
        fleet.engine_timing_observations = 0
        # what a server without the histogram leaves: no engine timing, ever
        fleet._learn_from_engine = lambda sid, up, now: setattr(up, "engine_timing", None)  # type: ignore[method-assign]
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(4):
                got = await asyncio.gather(*(stream_once(client, base, 12) for _ in range(4)))
                assert got == [12] * 4
        assert fleet.latency.decode_observations == 16
        assert fleet.engine_timing_observations == 0


def test_engine_timing_parser_reads_vllm_and_sglang_names():
    vllm = (
        b'vllm:num_requests_running{model_name="m"} 7\n'
        b'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
        b'vllm:prompt_tokens_total{model_name="m"} 4096\n'
        b'vllm:time_per_output_token_seconds_bucket{model_name="m",le="0.05"} 90\n'
        b'vllm:time_per_output_token_seconds_sum{model_name="m"} 2.5\n'
        b'vllm:time_per_output_token_seconds_count{model_name="m"} 100\n'
        # the newer name wins when both are there
        b'vllm:inter_token_latency_seconds_sum{model_name="m"} 3.0\n'
        b'vllm:inter_token_latency_seconds_count{model_name="m"} 120\n'
    )
    assert parse_engine_timing(vllm) == EngineTiming(3.0, 120.0, 4096.0, 7, 0.25)
    sglang = (
        b'sglang:num_running_reqs{model_name="m"} 3\n'
        b'sglang:token_usage{model_name="m"} 0.5\n'
        b'sglang:time_per_output_token_seconds_sum{model_name="m"} 1.0\n'
        b'sglang:time_per_output_token_seconds_count{model_name="m"} 40\n'
    )
    assert parse_engine_timing(sglang) == EngineTiming(1.0, 40.0, 0.0, 3, 0.5)
    assert parse_engine_timing(b'vllm:num_requests_running{model_name="m"} 7\n') is None


@pytest.mark.parametrize("tokens, kept", [(10, True), (40, False)])
def test_too_few_tokens_lengthen_the_interval_instead_of_teaching(tmp_path, tokens, kept):
    """Fewer than MIN_ENGINE_TOKENS tokens since the last observation: the interval grows
    (the older baseline is kept) instead of one noisy observation being taken."""
    profile = tmp_path / "flat40.yaml"
    profile.write_text(yaml.safe_dump(flat_profile(TOKEN_MS)))
    cfg = {
        "models": [
            {
                "name": "m",
                "profile": str(profile),
                "tiers": [{"name": "t", "ttftMs": 5000, "tpotMs": 100}],
                "servers": [{"url": "http://127.0.0.1:1", "tier": "t", "id": "e"}],
            }
        ]
    }
    fleet = Router(parse_config(cfg)).fleets["m"]
    up = fleet.upstreams["e"]
    first = EngineTiming(0.0, 0.0, 0.0, 4, 0.0)
    fleet._learn_from_engine("e", up, first)
    fleet._learn_from_engine("e", up, EngineTiming(tokens * 0.04, float(tokens), 0.0, 4, 0.0))
    assert (up.engine_timing is first) == kept
    assert fleet.engine_timing_observations == (0 if kept else 1)
    # an engine restart (its counters went back) starts over from there, teaching nothing
    n = fleet.engine_timing_observations
    fleet._learn_from_engine("e", up, EngineTiming(9.0, 300.0, 0.0, 4, 0.0))
    restarted = EngineTiming(0.04, 1.0, 0.0, 1, 0.0)
    fleet._learn_from_engine("e", up, restarted)
    assert up.engine_timing is restarted
    assert fleet.engine_timing_observations == n + 1  # the 300-token interval only
