"""A real router on loopback that sheds load reports it in /kubetier/status: refused
(429) requests are misses (kubetier.policy.attainment), so the tier is not at 100 %, and
the operator reads the same figure for the ModelService status."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import uvloop

from kubetier.api.router_status import RouterStatus
from kubetier.lean_http import port_of, start_server
from kubetier.operator.modelservice.router_feed import attainment_from_status
from kubetier.policy.latency import load_profile
from kubetier.router.app import Router
from kubetier.router.config import parse_config


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


@pytest.mark.timeout(30)
async def test_a_tier_shedding_load_reports_its_refusals_as_misses():
    release = asyncio.Event()

    async def engine(req, res):
        if req.path in ("/health", "/metrics"):
            res.send(200, b"", content_type="text/plain")
            return
        # Both tokens at once (on time), then hold the stream open: the engine's one
        # slot stays taken until the test releases it.
        res.start_stream(200)
        for w in ("a", "b"):
            res.write(b'data: {"choices":[{"index":0,"text":" %s"}]}\n\n' % w.encode())
        await release.wait()
        res.write(b"data: [DONE]\n\n")
        res.end()

    eng = await start_server(engine, "127.0.0.1", 0)
    profile = load_profile("llama-3.1-8b-h100").to_dict()
    profile["maxNumSeqs"] = 1  # one request at a time
    config = parse_config(
        {
            "models": [
                {
                    "name": "m",
                    "profile": profile,
                    "tiers": [{"name": "t", "ttftMs": 300, "tpotMs": 100, "meanOutputTokens": 2}],
                    "servers": [{"url": f"http://127.0.0.1:{port_of(eng)}", "tier": "t"}],
                }
            ]
        }
    )
    router = Router(config)
    router.start()
    front = await start_server(router.handle, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port_of(front)}"
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            first = asyncio.ensure_future(
                client.post(f"{base}/v1/completions", json={"model": "m", "prompt": "x", "stream": True})
            )
            await asyncio.sleep(0.2)  # the first request holds the only slot
            refused = await asyncio.gather(
                *(client.post(f"{base}/v1/completions", json={"model": "m", "prompt": "x"}) for _ in range(5))
            )
            assert [r.status_code for r in refused] == [429] * 5
            release.set()
            assert (await first).status_code == 200
            status = (await client.get(f"{base}/kubetier/status")).json()
    finally:
        front.close()
        await router.stop()
        eng.close()
    counts = RouterStatus.model_validate(status).models["m"].tiers["t"]
    assert (counts.completed, counts.slo_met, counts.rejected) == (1, 1, 5)
    # Before attainment was defined once, the router left the 429s out: 1/1 = 100 %.
    assert counts.attainment_percent == pytest.approx(100 / 6, abs=0.01)
    assert attainment_from_status(status, "m") == {"t": pytest.approx(100 / 6, abs=0.01)}
