"""The passthrough relay: an engine's chunked bytes go to the client as received.

A raw-socket engine writes its answer in scripted pieces (one chunk per token, several
chunks per write, an event split over two chunks, a chunk-size line split over two
reads, chunk extensions, a 1-byte chunk, a terminating chunk split in two, trailers),
so the framing cases the relay must get right happen on a real loopback connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
import uvloop
from in_process import serving

from kubetier.lean_http import port_of, start_server
from kubetier.lean_http.client import UpstreamError, UpstreamPool
from kubetier.router.app import Router
from kubetier.router.config import parse_config
from kubetier.router.relay import unchunk


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


def event(i: int, cid: str = "cmpl-raw-1") -> bytes:
    choice = {"index": 0, "text": f" t{i}", "finish_reason": None}
    doc = {"id": cid, "object": "text_completion", "choices": [choice]}
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"  # compact, as vLLM sends it


def chunk(payload: bytes, ext: bytes = b"") -> bytes:
    return b"%x%b\r\n%b\r\n" % (len(payload), ext, payload)


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
DONE = b"data: [DONE]\n\n"


def framings() -> dict[str, list[bytes]]:
    """Each case: the pieces the engine writes (a pause between them), 4 tokens + [DONE]."""
    e = [event(i) for i in range(4)]
    return {
        "chunk per token": [HEAD, *(chunk(x) for x in e), chunk(DONE) + b"0\r\n\r\n"],
        "head and first token together": [HEAD + chunk(e[0]), *(chunk(x) for x in e[1:]), chunk(DONE), b"0\r\n\r\n"],
        "several chunks per write": [HEAD, chunk(e[0]) + chunk(e[1]), chunk(e[2]) + chunk(e[3]) + chunk(DONE), b"0\r\n\r\n"],
        "event split over chunks": [HEAD, chunk(e[0][:40]), chunk(e[0][40:]) + chunk(e[1]), chunk(e[2][:-1]), chunk(e[2][-1:]), chunk(e[3] + DONE) + b"0\r\n\r\n"],
        "size line split over reads": [HEAD, chunk(e[0])[:1], chunk(e[0])[1:] + chunk(e[1])[:3], chunk(e[1])[3:], chunk(e[2]), chunk(e[3]), chunk(DONE), b"0\r", b"\n\r\n"],
        "chunk split mid-data": [HEAD, chunk(e[0])[:30], chunk(e[0])[30:-1], chunk(e[0])[-1:] + chunk(e[1]), chunk(e[2]), chunk(e[3]), chunk(DONE) + b"0\r\n\r\n"],
        "extensions and trailers": [HEAD, chunk(e[0], b";a=b"), chunk(e[1]), chunk(e[2]), chunk(e[3], b";x"), chunk(DONE), b"0\r\nx-trailer: 1\r\n\r\n"],
        "last event without its blank line until the end": [HEAD, chunk(e[0]), chunk(e[1]), chunk(e[2]), chunk(e[3][:-1]), chunk(b"\n") + chunk(DONE) + b"0\r\n\r\n"],
    }  # fmt: skip


class RawEngine:
    """Answers streams with scripted raw bytes; /health and /metrics like an engine."""

    def __init__(self, pieces: list[bytes], pause_s: float = 0.01, close_after: bool = False) -> None:
        self.pieces = pieces
        self.pause_s = pause_s
        self.close_after = close_after  # cut the connection after the pieces (a dying engine)
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.streams = 0

    async def start(self) -> RawEngine:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if head.startswith(b"POST"):
                    self.streams += 1
                    for piece in self.pieces:
                        writer.write(piece)
                        await writer.drain()
                        await asyncio.sleep(self.pause_s)
                    if self.close_after:
                        return
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@contextlib.asynccontextmanager
async def router_in_front_of(engine: RawEngine):
    cfg = {
        "models": [
            {
                "name": "m",
                "profile": "llama-3.1-8b-h100",
                "tiers": [{"name": "t", "ttftMs": 5000, "tpotMs": 1000}],
                "servers": [{"url": f"http://127.0.0.1:{engine.port}", "tier": "t"}],
            }
        ]
    }
    router = Router(parse_config(cfg), scrape_interval_s=0.05)
    try:
        async with serving(router) as base:
            yield router, base
    finally:
        engine.close()


def expected_body() -> bytes:
    return b"".join(event(i) for i in range(4)) + DONE


@pytest.mark.parametrize("case", list(framings()))
async def test_upstream_passthrough_hands_over_the_framed_bytes_and_finds_the_end(case):
    """The client layer alone: what it hands over, unchunked, is the engine's body; the
    body ends at the terminating chunk; the connection is reused for a decoded answer."""
    engine = await RawEngine(framings()[case]).start()
    pool = UpstreamPool("127.0.0.1", engine.port)
    try:
        r = await pool.request("POST", "/v1/completions", b"{}", passthrough=True)
        assert r.status == 200 and r.passthrough
        got = b""
        while (data := await r.read_some(5)) != b"":
            got += data
        assert r.chunk_aligned
        assert unchunk(got) == expected_body()
        assert b"0\r\n\r\n" not in got[-5:]  # the terminating chunk is not handed over
        r.close()
        # The same connection, now for a decoded answer (a fresh parser after passthrough).
        r2 = await pool.request("GET", "/health")
        assert r2.status == 200 and not r2.passthrough
        assert await r2.read_all(5) == b"ok"
        r2.close()
    finally:
        pool.close()
        engine.close()


async def test_upstream_passthrough_is_off_for_answers_that_are_not_chunked_200s():
    pieces = [
        b'HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{"error":{}}'
    ]
    engine = await RawEngine(pieces).start()
    pool = UpstreamPool("127.0.0.1", engine.port)
    try:
        r = await pool.request("POST", "/v1/completions", b"{}", passthrough=True)
        assert r.status == 503 and not r.passthrough
        assert await r.read_all(5) == b'{"error":{}}'
        r.close()
    finally:
        pool.close()
        engine.close()


async def test_upstream_passthrough_rejects_a_malformed_chunk_size():
    engine = await RawEngine([HEAD, b"zz\r\nhello\r\n"]).start()
    pool = UpstreamPool("127.0.0.1", engine.port)
    try:
        r = await pool.request("POST", "/v1/completions", b"{}", passthrough=True)
        with pytest.raises(UpstreamError, match="chunk size"):
            while await r.read_some(5) != b"":
                pass
        r.close()
    finally:
        pool.close()
        engine.close()


@pytest.mark.parametrize("case", list(framings()))
async def test_router_relays_every_framing_as_whole_events(case):
    """Through the router: the client gets exactly the engine's events and [DONE], and
    the router counted every token (its status shows the request met its target)."""
    engine = await RawEngine(framings()[case]).start()
    async with router_in_front_of(engine) as (router, base):
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream(
                "POST", f"{base}/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 4, "stream": True}
            ) as resp,
        ):
            assert resp.status_code == 200
            body = b"".join([piece async for piece in resp.aiter_raw()])
        assert body == expected_body()
        tally = router.metrics.tally("m", "t")
        assert tally.completed == 1 and tally.slo_met == 1
    assert engine.streams == 1


async def test_a_stream_broken_mid_chunk_resumes_from_the_whole_events_the_client_has():
    """The engine dies inside a chunk: the client keeps only whole events and the resumed
    engine (decoded path) continues after them: no token lost or repeated."""
    e = [event(i) for i in range(4)]
    broken = RawEngine([HEAD, chunk(e[0]), chunk(e[1]), chunk(e[2])[:25]], pause_s=0.3, close_after=True)
    await broken.start()

    # The second engine continues: it is asked for the 2 tokens left, with t0 t1 in the prompt.
    seen: list[dict] = []

    async def resume_handler(req, res):
        if req.path in ("/health", "/metrics"):
            # Not ready until the broken engine took the stream: the first attempt goes there.
            res.send(200 if broken.streams else 503, b"", content_type="text/plain")
            return
        body = json.loads(req.body)
        seen.append(body)
        res.start_stream(200)
        for i in (2, 3):
            res.write(event(i, "cmpl-other"))
        res.write(DONE)
        res.end()

    second = await start_server(resume_handler, "127.0.0.1", 0)
    cfg = {
        "models": [
            {
                "name": "m",
                "profile": "llama-3.1-8b-h100",
                "tiers": [{"name": "t", "ttftMs": 5000, "tpotMs": 1000}],
                "servers": [
                    {"url": f"http://127.0.0.1:{broken.port}", "tier": "t", "id": "a"},
                    {"url": f"http://127.0.0.1:{port_of(second)}", "tier": "t", "id": "b"},
                ],
            }
        ]
    }
    router = Router(parse_config(cfg), scrape_interval_s=0.05)
    router.start()
    front = await start_server(router.handle, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{port_of(front)}"
        await asyncio.sleep(0.3)  # first health checks: b is not ready yet
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.post(
                f"{base}/v1/completions", json={"model": "m", "prompt": "hello there", "max_tokens": 4, "stream": True}
            )
        text = resp.content
        assert resp.status_code == 200
        got = [json.loads(line[6:]) for line in text.split(b"\n") if line.startswith(b"data: {")]
        assert [g["choices"][0]["text"] for g in got] == [" t0", " t1", " t2", " t3"]
        assert {g["id"] for g in got} == {"cmpl-raw-1"}  # one chunk id throughout
        assert text.endswith(DONE)
        assert seen and seen[0]["max_tokens"] == 2 and seen[0]["prompt"].endswith(" t0 t1")
    finally:
        front.close()
        await router.stop()
        second.close()
        broken.close()
