"""A lean streaming client for measuring the simulator (and anything OpenAI-shaped).

Why not httpx here: a measuring client must not be the bottleneck, and must stamp the
moment a request leaves. Connections are opened before the clock starts (no connect
time inside TTFT), each request is one ``transport.write`` stamped right then, and
responses are parsed with httptools; a token is an SSE event whose JSON carries a
non-empty ``choices`` list, stamped when its bytes arrive.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httptools


@dataclass
class StreamResult:
    status: int = 0
    sent: float = 0.0
    token_times: list[float] = field(default_factory=list)
    done: bool = False  # saw data: [DONE] / a complete response
    error: str | None = None
    body: bytes = b""  # non-streamed responses and error bodies

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.sent if self.token_times else None

    @property
    def tpot(self) -> float | None:
        """Mean gap between tokens after the first."""
        n = len(self.token_times)
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else None

    @property
    def e2e(self) -> float | None:
        return self.token_times[-1] - self.sent if self.token_times else None


class SSEConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, host: str) -> None:
        self._host = host
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._result: StreamResult | None = None
        self._buffer = b""
        self._waiter: asyncio.Future | None = None
        self._stream = False
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(f"bad response: {exc}")

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._finish("connection closed" if exc is None else f"connection lost: {exc}")

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        if self._result is not None:
            self._result.status = self._parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
            self._stream = True

    def on_body(self, body: bytes) -> None:
        result = self._result
        if result is None:
            return
        if not self._stream:
            result.body += body
            return
        now = time.perf_counter()
        buf = self._buffer + body
        *events, self._buffer = buf.split(b"\n\n")
        for event in events:
            if event.startswith(b"data: {"):
                # Token chunks carry choices; the usage chunk has "choices":[].
                if b'"choices":[{' in event or b'"choices": [{' in event:
                    result.token_times.append(now)
            elif event == b"data: [DONE]":
                result.done = True

    def on_message_complete(self) -> None:
        if self._result is not None and not self._stream:
            self._result.done = True
        self._finish(None)

    def _finish(self, error: str | None) -> None:
        if self._result is not None and error is not None and not self._result.done:
            self._result.error = error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def request(self, path: str, body: dict | bytes, *, timeout: float = 600.0) -> StreamResult:
        if self.closed:
            raise ConnectionError("connection is closed")
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        result = StreamResult()
        self._result, self._buffer, self._stream = result, b"", False
        self._waiter = asyncio.get_running_loop().create_future()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        result.sent = time.perf_counter()
        self._transport.write(head + payload)
        try:
            await asyncio.wait_for(self._waiter, timeout)
        except TimeoutError:
            result.error = "timeout"
        self._result = None
        return result

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def connect(host: str, port: int) -> SSEConnection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: SSEConnection(f"{host}:{port}"), host, port)
    return protocol


async def run_concurrent(
    host: str, port: int, path: str, bodies: list[dict], *, timeout: float = 600.0, stagger_s: float = 0.0
) -> list[StreamResult]:
    """Open one connection per body, then send all requests (``stagger_s`` apart) and
    wait for every answer. Results are in body order."""
    conns = await asyncio.gather(*[connect(host, port) for _ in bodies])
    try:

        async def one(i: int, conn: SSEConnection, body: dict) -> StreamResult:
            if stagger_s:
                await asyncio.sleep(i * stagger_s)
            return await conn.request(path, body, timeout=timeout)

        return await asyncio.gather(*[one(i, c, b) for i, (c, b) in enumerate(zip(conns, bodies))])
    finally:
        for conn in conns:
            conn.close()
