"""Sleep mode in the engine simulator: vLLM's /sleep, /wake_up, /is_sleeping and the
vllm:engine_sleep_state gauge, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 3}


def sleep_state(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:engine_sleep_state":
            for s in family.samples:
                out[s.labels["sleep_state"]] = s.value
    return out


async def test_sleep_wake_cycle_with_timed_wake(sim_server):
    _, url = await sim_server(enable_sleep_mode=True, wake_seconds=0.4)
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        assert (await c.get("/is_sleeping")).json() == {"is_sleeping": False}
        assert sleep_state((await c.get("/metrics")).text) == {"awake": 1, "weights_offloaded": 0, "discard_all": 0}
        assert (await c.post("/sleep?level=1")).status_code == 200
        assert (await c.get("/is_sleeping")).json() == {"is_sleeping": True}
        assert sleep_state((await c.get("/metrics")).text)["weights_offloaded"] == 1
        r = await c.post("/v1/completions", json=BODY)
        assert r.status_code == 503 and "sleeping" in r.json()["error"]["message"]
        assert (await c.get("/health")).status_code == 200  # the process is alive
        t0 = time.perf_counter()
        assert (await c.post("/wake_up")).status_code == 200
        took = time.perf_counter() - t0
        assert took >= 0.35  # answers only once awake
        assert (await c.get("/is_sleeping")).json() == {"is_sleeping": False}
        assert (await c.post("/v1/completions", json=BODY)).status_code == 200


async def test_level_two_wake_takes_a_model_load_and_wakes_are_shared(sim_server):
    _, url = await sim_server(enable_sleep_mode=True, wake_seconds=0.05, model_load_seconds=0.5)
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        for _ in range(50):
            if (await c.get("/health")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await c.post("/sleep", params={"level": "2"})).status_code == 200
        assert sleep_state((await c.get("/metrics")).text)["discard_all"] == 1
        t0 = time.perf_counter()
        a, b = await asyncio.gather(c.post("/wake_up"), c.post("/wake_up"))
        assert a.status_code == b.status_code == 200
        assert time.perf_counter() - t0 >= 0.45


async def test_sleep_refused_under_load_bad_level_and_when_disabled(sim_server):
    _, url = await sim_server(enable_sleep_mode=True, time_scale=1)
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post("/sleep?level=3")
        assert r.status_code == 400 and r.json()["error"]["param"] == "level"
        assert (await c.get("/sleep")).status_code == 405
        gen = asyncio.create_task(c.post("/v1/completions", json={**BODY, "max_tokens": 200}))
        await asyncio.sleep(0.2)
        r = await c.post("/sleep")
        assert r.status_code == 409 and "drain" in r.json()["error"]["message"]
        assert (await gen).status_code == 200
    _, url2 = await sim_server()
    async with httpx.AsyncClient(base_url=url2, timeout=10) as c:
        assert (await c.post("/sleep")).status_code == 404  # like vLLM without the flag
