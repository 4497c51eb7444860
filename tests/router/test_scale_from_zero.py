"""A tier at zero behind the router (kubetier.router.scale_from_zero), against the real
engine simulator on loopback: the hold bound, the demand push, and a request that meets
an engine still loading (Ready to Kubernetes, 503 "model is loading" to the router)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from kubetier.engine_sim.app import EngineSimulator, SimConfig
from kubetier.lean_http import port_of, start_server
from kubetier.policy.latency import load_profile
from kubetier.router.app import Router
from kubetier.router.config import parse_config
from kubetier.router.scale_from_zero import DemandBoard, engine_not_serving_yet, hold_bound_s, poll_args


@contextlib.asynccontextmanager
async def engine(**config):
    sim = EngineSimulator(load_profile("llama-3.1-8b-h100"), SimConfig(**config))
    server = await sim.serve("127.0.0.1", 0)
    try:
        yield sim, f"http://127.0.0.1:{port_of(server)}"
    finally:
        server.close()
        await sim.stop()


@contextlib.asynccontextmanager
async def router(servers: list[str], tiers: list[dict], startup_s: float, **kw):
    cfg = {
        "models": [
            {
                "name": "m",
                "profile": "llama-3.1-8b-h100",
                "tiers": tiers,
                "servers": [{"url": u, "tier": tiers[0]["name"]} for u in servers],
            }
        ]
    }
    r = Router(parse_config(cfg), **kw)
    r.demand.startup_s = startup_s
    for f in r.fleets.values():
        f.demand = r.demand
    r.start()
    front = await start_server(r.handle, "127.0.0.1", 0)
    try:
        yield r, f"http://127.0.0.1:{port_of(front)}"
    finally:
        front.close()
        await r.stop()


def test_pure_parts():
    assert hold_bound_s(2.0, 40.0) == 42.0
    assert poll_args("/kubetier/demand?since=7&timeout=2.5") == (7, 2.5)
    assert poll_args("/kubetier/demand?since=x&timeout=999") == (0, 30.0)
    assert engine_not_serving_yet(503, b'{"error":{"message":"model is loading"}}')
    assert engine_not_serving_yet(503, b'{"error":{"message":"model is sleeping"}}')
    assert not engine_not_serving_yet(503, b"overloaded")
    assert not engine_not_serving_yet(500, b"model is loading")


async def test_demand_board_long_poll_answers_at_once_on_a_held_request():
    board = DemandBoard(startup_s=10)
    assert (await board.wait(0, 0))["version"] == 0
    waiter = asyncio.ensure_future(board.wait(0, 5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    t0 = time.monotonic()
    board.held("m", "batch")
    doc = await waiter
    assert time.monotonic() - t0 < 0.5
    assert doc == {"version": 1, "held": {"m": {"batch": 1}}}
    board.released("m", "batch")
    assert board.snapshot() == {"version": 1, "held": {}}


async def test_request_meeting_a_loading_engine_is_held_again_not_failed():
    # The router believes the server ready (no health check yet); the engine loads for
    # 1.5 s and answers 503 "model is loading" meanwhile. Before: a 502 to the client.
    async with engine(model_name="m", model_load_seconds=1.5) as (_sim, url):
        tiers = [{"name": "t", "ttftMs": 2000, "tpotMs": 100, "onLate": "queue"}]
        async with router([url], tiers, startup_s=10, scrape_interval_s=0.3) as (r, base):
            async with httpx.AsyncClient(timeout=30) as c:
                t0 = time.monotonic()
                resp = await c.post(base + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 4})
                waited = time.monotonic() - t0
            status = r.status()
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 4
    assert 1.0 < waited < 8.0, waited
    assert status["models"]["m"]["tiers"]["t"].get("failed", 0) == 0


class HealthyButLoading:
    """An engine whose /health already passes (a probe on a path that answers before the
    weights are in) while generation answers 503 "model is loading" ``loading`` times."""

    def __init__(self, loading: int) -> None:
        self.loading = loading
        self.generation_calls = 0

    async def handle(self, req, res) -> None:
        if req.path == "/health":
            res.send(200, b"ok", content_type="text/plain")
        elif req.path == "/metrics":
            res.send(200, b"", content_type="text/plain")
        else:
            self.generation_calls += 1
            if self.generation_calls <= self.loading:
                res.send_json(503, {"error": {"message": "model is loading", "code": 503}})
            else:
                res.send_json(200, {"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": " ok",
                              "finish_reason": "length"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                              "total_tokens": 2}})  # fmt: skip


async def test_503_loading_from_a_healthy_engine_requeues_until_it_serves():
    eng = HealthyButLoading(loading=2)
    server = await start_server(eng.handle, "127.0.0.1", 0)
    try:
        tiers = [{"name": "t", "ttftMs": 2000, "tpotMs": 100, "onLate": "queue"}]
        url = f"http://127.0.0.1:{port_of(server)}"
        async with (
            router([url], tiers, startup_s=10, scrape_interval_s=0.2) as (_r, base),
            httpx.AsyncClient(timeout=30) as c,
        ):
            resp = await c.post(base + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 1})
    finally:
        server.close()
    assert resp.status_code == 200, resp.text
    assert eng.generation_calls == 3


async def test_reject_tier_at_zero_is_held_for_the_start_up_then_429_with_retry_after():
    # No server ever becomes ready (its engine never loads): a reject tier is held for
    # TTFT + start-up (0.3 + 1.0 s), is pushed as demand, then gets 429 + Retry-After.
    async with engine(model_name="m", model_load_seconds=600) as (_sim, url):
        tiers = [{"name": "t", "ttftMs": 300, "tpotMs": 100, "onLate": "reject"}]
        async with router([url], tiers, startup_s=1.0, scrape_interval_s=0.05) as (_r, base):
            await asyncio.sleep(0.3)  # the health check marks the loading server unready
            async with httpx.AsyncClient(timeout=30) as c:
                poll = asyncio.ensure_future(c.get(base + "/kubetier/demand", params={"since": 0, "timeout": 5}))
                t0 = time.monotonic()
                resp = await c.post(base + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 4})
                waited = time.monotonic() - t0
                pushed = (await poll).json()
    assert resp.status_code == 429, resp.text
    assert int(resp.headers["retry-after"]) >= 1
    assert 1.2 <= waited < 4.0, waited
    assert pushed["version"] >= 1 and pushed["held"] == {"m": {"t": 1}}


async def test_queue_tier_at_zero_waits_past_its_ttft_for_the_start_up():
    # The engine loads for 1.2 s, longer than the tier's TTFT (0.3 s): a queueing tier
    # at zero is served once it loads (the start-up is not charged to its TTFT).
    async with engine(model_name="m", model_load_seconds=1.2) as (_sim, url):
        tiers = [{"name": "t", "ttftMs": 300, "tpotMs": 100, "onLate": "reject"}]
        async with router([url], tiers, startup_s=5.0, scrape_interval_s=0.05) as (_r, base):
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(timeout=30) as c:
                resp = await c.post(base + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 4})
    # even a reject tier: its bound (TTFT + start-up) is met, so it is served
    assert resp.status_code == 200, resp.text
