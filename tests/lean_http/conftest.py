"""Fixtures for the lean HTTP server: uvloop, a server on a free loopback port, and a
raw-socket client that parses responses with httptools (so tests see exact bytes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httptools
import pytest
import uvloop

from kubetier.lean_http import Limits, close_connections, port_of, start_server


def pytest_asyncio_loop_factories(config, item):
    # The servers run on uvloop in production; test them on it.
    return {"uvloop": uvloop.new_event_loop}


@dataclass
class RawResponse:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False


class _ResponseCollector:
    def __init__(self) -> None:
        self.done: list[RawResponse] = []
        self.current: RawResponse | None = None
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.current = RawResponse()

    def on_status(self, status: bytes) -> None:
        self.current.status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.current.chunks.append(body)
        self.current.body += body

    def on_message_complete(self) -> None:
        self.current.complete = True
        self.done.append(self.current)
        self.current = None


class RawClient:
    """A client on a plain socket: writes any bytes, reads responses with a real parser."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.collector = _ResponseCollector()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def responses(self, n: int, timeout: float = 5.0) -> list[RawResponse]:
        async with asyncio.timeout(timeout):
            while len(self.collector.done) < n:
                data = await self.reader.read(65536)
                if not data:
                    break
                self.collector.parser.feed_data(data)
        done, self.collector.done = self.collector.done[:n], self.collector.done[n:]
        return done

    async def response(self, timeout: float = 5.0) -> RawResponse:
        got = await self.responses(1, timeout)
        assert got, "connection closed before a response arrived"
        return got[0]

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    return True
                if not data:
                    return True
                self.collector.parser.feed_data(data)

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def serve() -> AsyncIterator:
    """``port = await serve(handler, limits=...)``; every server is closed afterwards."""
    servers = []

    async def _serve(handler, limits: Limits | None = None) -> int:
        server = await start_server(handler, "127.0.0.1", 0, limits=limits)
        servers.append(server)
        return port_of(server)

    yield _serve
    for server in servers:
        server.close()
        close_connections(server)
        await server.wait_closed()


@pytest.fixture
async def connect() -> AsyncIterator:
    clients: list[RawClient] = []

    async def _connect(port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = RawClient(reader, writer)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()
