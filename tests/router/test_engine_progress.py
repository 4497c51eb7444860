"""The router's load reports carry the engine's progress the routing policy's lag needs
(kubetier.router.engine_progress): the iterations an engine ran between two scrapes,
from vLLM's vllm:iteration_tokens_total count (the bundled engine simulator exports it
too), while the prefill half comes from the first tokens of the streams the router
relays. Fed through the router's own scrape path, the policy ends with the same lag as
the fleet simulator's policy given the same events through its load reports."""

from __future__ import annotations

import contextlib

import pytest
import uvloop
from fake_engines import FakeEngine, router_config
from in_process import serving

from kubetier.engine_sim.metrics import EngineMetrics
from kubetier.policy.latency import load_profile
from kubetier.policy.routing import RoutingPolicy, ServerLoad
from kubetier.router.app import Router
from kubetier.router.config import parse_config
from kubetier.router.engine_progress import EngineProgress
from kubetier.router.fleet import parse_engine_scrape


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


VLLM = b"""# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_bucket{engine="0",le="1.0",model_name="m"} 3.0
vllm:iteration_tokens_total_bucket{engine="0",le="+Inf",model_name="m"} 120.0
vllm:iteration_tokens_total_sum{engine="0",model_name="m"} 9000.0
vllm:iteration_tokens_total_count{engine="0",model_name="m"} 120.0
vllm:iteration_tokens_total_count{engine="1",model_name="m"} 30.0
"""


def parse_iteration_count(text: bytes) -> float | None:
    return parse_engine_scrape(text).iterations


def test_the_iteration_count_is_read_from_vllm_s_histogram():
    assert parse_iteration_count(VLLM) == 150.0  # summed over engines, buckets ignored
    assert parse_iteration_count(b"vllm:num_requests_running 3\n") is None


def test_the_bundled_engine_simulator_exports_it():
    m = EngineMetrics("m")
    for tokens in (1, 2048, 17):
        m.iteration_tokens.observe(tokens)
    text = m.render(
        running=0,
        waiting=0,
        kv_usage=0.0,
        kv_tokens=0,
        queued_prefill_tokens=0,
        power_watts=0.0,
        time_scale=1.0,
        loaded=True,
    ).encode()
    assert parse_iteration_count(text) == 3.0


def test_iterations_are_counted_between_scrapes():
    p = EngineProgress()
    assert p.steps("a", parse_iteration_count(VLLM)) is None  # first scrape: nothing to difference
    assert p.steps("a", parse_iteration_count(VLLM.replace(b"} 30.0", b"} 55.0"))) == 25
    assert p.steps("a", parse_iteration_count(VLLM)) is None  # the counter went back: the engine restarted
    assert p.steps("a", parse_iteration_count(b"")) is None  # no counter exported


class ScriptedMetricsEngine(FakeEngine):
    metrics_text: bytes = b""

    async def handle(self, req, res) -> None:
        if req.path == "/metrics":
            res.send(200, self.metrics_text, content_type="text/plain")
            return
        await super().handle(req, res)


def _metrics(running: int, kv_frac: float, iterations: int) -> bytes:
    return (
        f'vllm:num_requests_running{{model_name="m"}} {running}\n'
        f'vllm:kv_cache_usage_perc{{model_name="m"}} {kv_frac}\n'
        f'vllm:iteration_tokens_total_count{{model_name="m"}} {iterations}\n'
    ).encode()


@contextlib.asynccontextmanager
async def _router(cfg: dict):
    router = Router(parse_config(cfg), scrape_interval_s=3600)  # the test drives the scrapes
    async with serving(router):
        yield router


async def test_the_router_s_scrapes_give_the_policy_the_simulator_s_lag():
    eng = await ScriptedMetricsEngine().start()
    try:
        tiers = [{"name": "t", "ttftMs": 500, "tpotMs": 25}]
        async with _router(router_config([eng], tiers=tiers)) as router:
            f = router.fleets["m"]
            f.policy.track_lag = True  # routing.TRACK_LAG is off by default (see there)
            (sid,) = f.upstreams
            cap = load_profile("llama-3.1-8b-h100").kv_capacity_tokens
            # the simulator's policy, fed through load reports as the fleet simulator does
            sim = RoutingPolicy(list(f.tiers.values()), track_lag=True)
            sim.upsert_server(ServerLoad(sid, "t", load_profile("llama-3.1-8b-h100")))

            def both_report(running: int, kv: int, count: int, iterations: int | None, queued: int) -> None:
                # the engine reports a usage fraction; the router turns it back into kv
                eng.metrics_text = _metrics(running, (kv + 0.5) / cap, count)
                sim.observe(sid, running, kv, queued, iterations)

            # one sequence already decoding (the first scrape has no earlier count)
            both_report(1, 300, 1000, None, 0)
            await f._scrape(sid)
            # a 6,000-token prompt is admitted and prefilled beside it in 3 iterations:
            # the router sees its first token in the relayed stream; the simulator sees
            # the queue fall in its next load report
            f._admit(sid, 6000, f.tiers["t"])
            sim.on_admit(sid, 6000, 100)
            f.prefill_done(sid, 6000)
            both_report(2, 6301, 1003, 3, 0)  # (300 + the 6,000-token prompt + its first token)
            await f._scrape(sid)
            live_lag = f.policy._servers[sid].lag_s
            assert live_lag > 0.05  # the decoding sequence is behind by the chunks
            assert live_lag == pytest.approx(sim._servers[sid].lag_s, abs=1e-9)
            # 10 decode steps give part of it back, counted by the engine
            both_report(2, 6321, 1013, 10, 0)
            await f._scrape(sid)
            assert f.policy._servers[sid].lag_s == pytest.approx(sim._servers[sid].lag_s, abs=1e-9)
            assert f.policy._servers[sid].lag_s < live_lag
    finally:
        eng.close()
