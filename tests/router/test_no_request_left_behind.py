"""No request left behind: disconnects cancel engine work, timeouts come from the request,
slow is not failed, unready engines hand their streams over at once, queueing tiers have a
deadline, outages are 503 and load shedding 429, and a resumed stream is one stream
(same chunk id, usage of the original prompt plus every token, no token twice or lost).

In-process router and scripted engines (``fake_engines``) on real loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest
import uvloop
from fake_engines import FakeEngine, Script, router_config
from in_process import serving

from kubetier.policy.latency import load_profile
from kubetier.router.app import Router
from kubetier.router.config import parse_config


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


@contextlib.asynccontextmanager
async def running(cfg: dict, **kw):
    kw.setdefault("scrape_interval_s", 0.05)
    router = Router(parse_config(cfg), **kw)
    async with serving(router) as base:
        yield router, base


async def engines(*scripts: Script) -> list[FakeEngine]:
    return [await FakeEngine(s).start() for s in scripts]


async def wait_for(cond, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


async def post_then_leave(base: str, body: dict, after_s: float) -> None:
    """A raw-socket client that sends a request and closes the connection mid-answer."""
    host, port = base.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    raw = json.dumps(body).encode()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(raw), raw)
    )
    await writer.drain()
    await asyncio.sleep(after_s)
    writer.close()


def events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("stream", [False, True])
async def test_client_disconnect_cancels_the_engine_request(stream):
    (eng,) = await engines(Script(token_delay_s=0.05, whole_delay_s=5.0))
    try:
        async with running(router_config([eng])) as (router, base):
            await post_then_leave(base, {"model": "m", "prompt": "x", "max_tokens": 50, "stream": stream}, 0.3)
            await wait_for(lambda: eng.disconnects == 1, 2.0)  # the engine saw its request cancelled
            assert eng.finished == 0
            await wait_for(lambda: router.status()["models"]["m"]["tiers"]["t"]["inflight"] == 0)
            fleet = router.fleets["m"]
            assert [fleet.policy.server(sid).running for sid in fleet.upstreams] == [0]  # capacity given back
    finally:
        eng.close()


async def test_slow_whole_answer_is_504_not_retried_and_a_long_healthy_one_completes():
    a, b = await engines(Script(token_delay_s=0.02, whole_delay_s=1.0), Script(token_delay_s=0.02, whole_delay_s=1.0))
    try:
        cfg = router_config([a, b], tiers=[{"name": "t", "ttftMs": 100, "tpotMs": 10}])
        async with (
            running(cfg, timeout_floor_s=0.1, timeout_slack=1.0) as (router, base),
            httpx.AsyncClient(timeout=10) as c,
        ):
            # max_tokens 2: allowed 0.1 + 0.1 + 2 x 0.01 = 0.22 s; the engine needs ~1 s.
            r = await c.post(base + "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 2})
            assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
            assert len(a.requests) + len(b.requests) == 1  # never retried
            await wait_for(lambda: a.disconnects + b.disconnects == 1)  # and the engine was told
            st = router.status()["models"]["m"]
            assert all(s["ready"] for s in st["servers"])  # slow is not broken
            # max_tokens 150: allowed 0.1 + 0.1 + 1.5 = 1.7 s > the engine's ~1 s + 3 ms/token.
            a.script.token_delay_s = b.script.token_delay_s = 0.001
            r = await c.post(base + "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 150})
            assert r.status_code == 200 and r.headers["x-kubetier-tier"] == "t"
            assert r.json()["usage"]["completion_tokens"] == 150
    finally:
        a.close()
        b.close()


async def test_stall_is_measured_from_the_last_byte_and_the_stream_resumes():
    # Both stall after 3 tokens of a stream: the resumed stream needs only 3 more.
    a, b = await engines(
        Script(token_delay_s=0.01, stall_after_tokens=3), Script(token_delay_s=0.01, stall_after_tokens=3)
    )
    try:
        cfg = router_config([a, b])
        async with running(cfg, stall_timeout_s=0.4) as (_router, base), httpx.AsyncClient(timeout=10) as c:
            t0 = time.monotonic()
            body = {"model": "m", "prompt": [1, 2, 3, 4], "max_tokens": 6, "stream": True}
            r = await c.post(base + "/v1/completions", json=body)
            took = time.monotonic() - t0
        texts = [e["choices"][0]["text"] for e in events(r.text) if e.get("choices")]
        assert "".join(texts) == "".join(f" t{4 + i}" for i in range(6))
        assert 0.4 <= took < 1.2, took  # one stall window after the last byte, not two
    finally:
        a.close()
        b.close()


async def test_an_engine_marked_unready_hands_its_streams_over_at_once():
    a, b = await engines(Script(token_delay_s=0.03), Script(token_delay_s=0.03))
    try:
        cfg = router_config([a, b])
        async with running(cfg, stall_timeout_s=30.0) as (router, base):
            await wait_for(lambda: all(s["ready"] for s in router.status()["models"]["m"]["servers"]))
            async with httpx.AsyncClient(timeout=10) as c:
                body = {"model": "m", "prompt": [7] * 8, "max_tokens": 30, "stream": True}
                texts: list[str] = []
                t0 = time.monotonic()
                async with c.stream("POST", base + "/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            texts.append(json.loads(line[6:])["choices"][0]["text"])
                            if len(texts) == 5:
                                first = a if a.requests else b
                                first.script.healthy = False  # the next health check marks it unready
                took = time.monotonic() - t0
        assert "".join(texts) == "".join(f" t{8 + i}" for i in range(30))  # none twice, none lost
        assert a.requests and b.requests  # it moved
        assert took < 5, took  # at once, not after a 30 s stall timeout
    finally:
        a.close()
        b.close()


async def test_resumed_stream_keeps_one_chunk_id_and_reports_original_usage():
    a, b = await engines(Script(die_after_tokens=4), Script(die_after_tokens=7))  # whichever goes first dies
    try:
        async with running(router_config([a, b])) as (_router, base), httpx.AsyncClient(timeout=10) as c:
            body = {
                "model": "m",
                "prompt": "abcdefghijklmnop",  # 4 tokens
                "max_tokens": 10,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            r = await c.post(base + "/v1/completions", json=body)
        evs = events(r.text)
        assert len({e["id"] for e in evs}) == 1
        texts = [e["choices"][0]["text"] for e in evs if e.get("choices")]
        assert "".join(texts) == "".join(f" t{4 + i}" for i in range(10))
        usage = evs[-1]["usage"]
        assert usage == {"prompt_tokens": 4, "completion_tokens": 10, "total_tokens": 14}
        (resumed,) = [r for r in a.requests + b.requests if isinstance(r["prompt"], list)]
        sent = 10 - resumed["max_tokens"]
        assert sent in (4, 7)
        # The prompt's ids plus the generated ids: no re-tokenization.
        assert resumed["prompt"] == [1000, 1001, 1002, 1003, *range(4, 4 + sent)]
    finally:
        a.close()
        b.close()


async def test_queueing_tier_without_a_server_gets_503_with_retry_after_not_an_endless_wait():
    (eng,) = await engines(Script(healthy=False))
    try:
        tiers = [{"name": "q", "ttftMs": 200, "tpotMs": 100, "onLate": "queue"}]
        async with running(router_config([eng], tiers=tiers)) as (_router, base):
            await asyncio.sleep(0.2)  # the health checks mark the only server unready
            async with httpx.AsyncClient(timeout=10) as c:
                t0 = time.monotonic()
                r = await c.post(base + "/v1/completions", json={"model": "m", "prompt": "x"})
                assert time.monotonic() - t0 < 2.0
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "service_unavailable"
    finally:
        eng.close()


async def test_queueing_tier_with_busy_servers_gets_429_at_its_deadline():
    (eng,) = await engines(Script(token_delay_s=0.05))
    try:
        profile = load_profile("llama-3.1-8b-h100").to_dict()
        profile["maxNumSeqs"] = 1  # one stream fills the server
        tiers = [{"name": "q", "ttftMs": 100, "tpotMs": 100, "onLate": "queue"}]
        cfg = router_config([eng], tiers=tiers, profile=profile)
        async with running(cfg, queue_timeout_s=0.5) as (_router, base), httpx.AsyncClient(timeout=10) as c:
            long = asyncio.ensure_future(
                c.post(base + "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 60, "stream": True})
            )
            await wait_for(lambda: len(eng.requests) == 1)
            t0 = time.monotonic()
            r = await c.post(base + "/v1/completions", json={"model": "m", "prompt": "x"})
            waited = time.monotonic() - t0
            long.cancel()
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert "queue deadline" in r.json()["error"]["message"] and r.headers["retry-after"]
        assert 0.4 < waited < 1.5, waited
    finally:
        eng.close()


async def test_reject_tier_outage_is_503_not_429():
    (eng,) = await engines(Script(healthy=False))
    try:
        tiers = [{"name": "r", "ttftMs": 200, "tpotMs": 100}]
        async with running(router_config([eng], tiers=tiers)) as (_router, base):
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(timeout=10) as c:
                r = await c.post(base + "/v1/completions", json={"model": "m", "prompt": "x"})
        assert r.status_code == 503 and r.headers["retry-after"]
    finally:
        eng.close()


async def test_health_checks_that_only_time_out_need_several_in_a_row():
    """A starved CPU can make one health check time out; unready cuts every stream, so a
    timeout alone must repeat before the server is marked unready. A refusal is definite."""
    from kubetier.lean_http.client import UpstreamError
    from kubetier.router import fleet as fleet_mod

    (eng,) = await engines(Script())
    try:
        async with running(router_config([eng]), scrape_interval_s=3600) as (router, _base):
            f = router.fleets["m"]
            (sid,) = f.upstreams
            up = f.upstreams[sid]

            async def slow(*a, **k):
                raise UpstreamError("no response within 2.0 s", "headers", timeout=True)

            up.pool.request = slow
            for _ in range(fleet_mod.SLOW_CHECKS_UNREADY - 1):
                await f._scrape(sid)
                assert f.can_serve("t")
            await f._scrape(sid)
            assert not f.can_serve("t")
    finally:
        eng.close()
