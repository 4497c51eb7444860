"""A lean HTTP/1.1 server core: one asyncio Protocol per connection, httptools parsing.

Why not aiohttp or uvicorn: on a 2-core machine only a minimal asyncio/uvloop path
with a real parser held ~1,000 token streams per core; framework layers cost 2-3x per
relayed token (docs/router.md, "Data path"). This module keeps the per-token path to
one ``transport.write`` and everything else (parsing, limits, timers) per request.

Behaviour:

- HTTP/1.1 keep-alive; pipelined requests are answered strictly in order (one handler
  at a time per connection; later requests wait parsed in a bounded queue, and reading
  pauses when that queue is full).
- Limits (``Limits``): request line + headers size and count (431), body size (413,
  checked against Content-Length before the body arrives), time to receive a whole
  request (408, slow-loris protection), idle keep-alive timeout, and for slow readers
  a cap on buffered output plus a stall timeout in ``drain()`` (connection aborted).
- Responses: full (Content-Length) or streamed (chunked transfer encoding; on HTTP/1.0
  close-delimited). ``write()`` never awaits; ``drain()`` waits only while the transport
  has paused writing (``writing_paused`` says so without a coroutine). Client
  disconnects (including EOF: a client that closes while its answer is computed) set
  ``Response.disconnected`` and fire the callbacks added with ``add_disconnect_callback``;
  the handler is not cancelled.
- A handler exception becomes a 500 with a JSON error body, or, when a stream had
  already started, an aborted connection (a truncated chunked stream, so the client
  sees an error rather than a stream that looks complete). Malformed HTTP gets 400.

Request paths are passed as sent (not percent-decoded); header names are lower-case;
repeated headers are joined with ", ".
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import signal
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httptools

from kubetier.lean_http.errors import error_body

__all__ = [
    "EarlyAnswer",
    "Handler",
    "HeadCheck",
    "Limits",
    "Request",
    "RequestHead",
    "Response",
    "close_connections",
    "error_body",
    "start_server",
]

log = logging.getLogger("kubetier.lean_http")


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 32 * 1024  # request line + all header names and values
    max_headers: int = 100
    max_body_bytes: int = 16 * 1024 * 1024  # long-context prompts are a few MiB of JSON
    request_timeout_s: float = 30.0  # first byte to last byte of one request
    keepalive_timeout_s: float = 75.0  # idle connection between requests
    write_stall_timeout_s: float = 60.0  # drain() waiting on a client that does not read
    max_write_buffer_bytes: int = 8 * 1024 * 1024  # buffered output to a paused client
    # Parsed requests queued behind the one being answered before reading pauses. Soft:
    # httptools cannot stop mid-buffer, so one read's worth more may be parsed.
    max_pipelined: int = 32
    # Open connections: per process, and per client address (one client cannot take them
    # all). Over either, a new connection gets 503 and is closed.
    max_connections: int = 10_000
    max_connections_per_client: int = 4_096
    # A request refused from its head (``head_check``) has its body read and dropped, not
    # kept, up to this many bytes (so the client sees the answer, not a reset); beyond it
    # the answer goes out at once and the connection closes.
    max_discard_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        for name in (
            "max_header_bytes",
            "max_headers",
            "max_body_bytes",
            "max_write_buffer_bytes",
            "max_pipelined",
            "max_connections",
            "max_connections_per_client",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("request_timeout_s", "keepalive_timeout_s", "write_stall_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    client: tuple[str, int] | None
    http_version: str = "1.1"

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` on invalid JSON)."""
        return json.loads(self.body)


Handler = Callable[[Request, "Response"], Awaitable[None]]


@dataclass(slots=True)
class RequestHead:
    """A request before its body: what ``head_check`` sees."""

    method: str
    path: str
    headers: dict[str, str]
    client: tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class EarlyAnswer:
    """``head_check``'s refusal: answered without keeping the body, then the connection closes."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


# Decide from the head alone (authentication, content type, throttling): None = go on.
HeadCheck = Callable[[RequestHead], EarlyAnswer | None]
ErrorBody = Callable[[int, str], bytes]

_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"HTTP status must be 100..999, got {status!r}")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode()
    return line


def _header_block(headers: Iterable[tuple[str, str]]) -> bytes:
    parts = []
    for name, value in headers:
        value = str(value)
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} contains a line break")
        parts.append(f"{name}: {value}\r\n")
    return "".join(parts).encode("latin-1")


# Header names as received -> lower-case str: clients send the same dozen names on every
# request (one decode and lower() fewer per header); bounded, so odd names cannot grow it.
_HEADER_NAMES: dict[bytes, str] = {}
_MAX_HEADER_NAMES = 512


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing and answer with ``status``
    (``answer``: a ready-made body and headers from ``head_check``)."""

    def __init__(self, status: int, message: str, answer: EarlyAnswer | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.answer = answer


class Response:
    """The answer to one request. Exactly one of ``send``/``send_json``/``start_stream``."""

    __slots__ = (
        "_callbacks",
        "_chunked",
        "_conn",
        "_disconnected",
        "_extra",
        "_finished",
        "_head_only",
        "_keep_alive",
        "_started",
        "status",
    )

    def __init__(self, conn: _Connection, keep_alive: bool, head_only: bool, http10: bool) -> None:
        self._conn = conn
        self._keep_alive = keep_alive
        self._head_only = head_only
        self._chunked = not http10
        self._started = False
        self._finished = False
        self._disconnected = False
        self._callbacks: list[Callable[[], Any]] | None = None
        self._extra: list[tuple[str, str]] | None = None
        self.status = 0

    def add_header(self, name: str, value: str) -> None:
        """A header for whichever answer this response gives (request id, CORS)."""
        if self._started:
            raise RuntimeError("add_header() after the response started")
        if self._extra is None:
            self._extra = []
        self._extra.append((name, value))

    # --- full responses -------------------------------------------------------------

    def send(
        self,
        status: int,
        body: bytes,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> None:
        self._begin(status)
        self._finished = True
        if self._disconnected:
            self._conn._response_finished(self)
            return
        head = [_status_line(status), b"content-type: ", content_type.encode("latin-1"), b"\r\n"]
        head.append(b"content-length: %d\r\n" % len(body))
        extra = _header_block(headers if self._extra is None else [*self._extra, *headers])
        if b"connection: close" in extra.lower():
            self._keep_alive = False
        if not self._keep_alive:
            head.append(b"connection: close\r\n")
        head.append(extra)
        head.append(b"\r\n")
        if not self._head_only:
            head.append(body)
        self._conn._write(b"".join(head))
        self._conn._response_finished(self)

    def send_json(self, status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send(status, json.dumps(obj, separators=(",", ":")).encode(), headers)

    # --- streamed responses ---------------------------------------------------------

    def start_stream(
        self,
        status: int = 200,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str = "text/event-stream",
    ) -> None:
        self._begin(status)
        if self._head_only:
            # HEAD: headers only, and the stream is over at once.
            self._chunked = False
        head = [_status_line(status), b"content-type: ", content_type.encode("latin-1"), b"\r\n"]
        if content_type.startswith("text/event-stream"):
            head.append(b"cache-control: no-cache\r\n")
        extra = _header_block(headers if self._extra is None else [*self._extra, *headers])
        if b"connection: close" in extra.lower():
            self._keep_alive = False
        if self._chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        else:
            # HTTP/1.0 has no chunked encoding: the body ends when the connection closes.
            self._keep_alive = False
        if not self._keep_alive:
            head.append(b"connection: close\r\n")
        head.append(extra)
        head.append(b"\r\n")
        if not self._disconnected:
            self._conn._write(b"".join(head))
        if self._head_only:
            self._finished = True
            self._conn._response_finished(self)

    def write(self, chunk: bytes) -> bool:
        """Send one chunk of a stream; no await. A no-op once the client is gone.

        Returns whether the client keeps up: False when it is gone or slow to read (then
        ``drain()``), so a relay needs no second look per chunk."""
        if not self._started:
            raise RuntimeError("write() before start_stream()")
        if self._finished or self._disconnected:
            return False
        if not chunk:
            return True
        conn = self._conn
        if conn._closed or conn._aborted:
            return False
        if self._chunked:
            # One buffer: uvloop sends it at once (one syscall), no join in Python.
            conn._transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))  # type: ignore[union-attr]
        else:
            conn._transport.write(chunk)  # type: ignore[union-attr]
        if conn._write_paused:
            conn._check_write_buffer()
            return False
        return not self._disconnected

    def write_framed(self, data: bytes) -> bool:
        """Send bytes already in the chunked framing (whole chunks, e.g. an engine's, as a
        passthrough relay received them); only when ``chunked``. Returns as ``write``."""
        if self._finished or self._disconnected:
            return False
        conn = self._conn
        if conn._closed or conn._aborted:
            return False
        conn._transport.write(data)  # type: ignore[union-attr]
        if conn._write_paused:
            conn._check_write_buffer()
            return False
        return not self._disconnected

    @property
    def chunked(self) -> bool:
        """The stream goes out in the chunked transfer coding (HTTP/1.1; not for HTTP/1.0)."""
        return self._chunked

    async def drain(self) -> None:
        """Wait while the transport is paused (client slow to read); return at once otherwise.

        Returns (without raising) when the client disconnects; check ``disconnected``.
        """
        conn = self._conn
        if conn._write_paused and not self._disconnected:
            await conn._wait_writable()

    def end(self) -> None:
        """Finish the stream (the terminating chunk) and release the connection."""
        if self._finished:
            return
        if not self._started:
            raise RuntimeError("end() before start_stream()")
        self._finished = True
        if self._chunked and not self._disconnected:
            self._conn._write(b"0\r\n\r\n")
        self._conn._response_finished(self)

    def abort(self) -> None:
        """Cut the connection now, mid-response (a failed upstream, fault injection).

        A stream is left without its terminating chunk, so the client sees an error."""
        if self._disconnected or self._finished:
            return
        self._started = True
        self._keep_alive = False
        self._conn._abort()  # marks this response disconnected: its callbacks run
        self._mark_disconnected()
        self._finished = True
        self._conn._response_finished(self)

    # --- client state ---------------------------------------------------------------

    @property
    def disconnected(self) -> bool:
        return self._disconnected

    @property
    def writing_paused(self) -> bool:
        """True when ``drain()`` would wait (the client is slow to read). A relay checks
        this before awaiting ``drain()``, so the common case makes no coroutine per chunk."""
        return self._conn._write_paused and not self._disconnected

    @property
    def started(self) -> bool:
        return self._started

    @property
    def finished(self) -> bool:
        return self._finished

    def add_disconnect_callback(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` once if the client goes away before the response ends."""
        if self._disconnected:
            callback()
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    def _begin(self, status: int) -> None:
        if self._started:
            raise RuntimeError("response already started")
        _status_line(status)  # validates before anything is marked
        self._started = True
        self.status = status

    def _mark_disconnected(self) -> None:
        if self._disconnected:
            return
        self._disconnected = True
        callbacks, self._callbacks = self._callbacks, None
        if callbacks and not self._finished:
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("disconnect callback failed")


class _ServerState:
    __slots__ = ("connections", "error_body", "handler", "head_check", "limits", "per_client")

    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        head_check: HeadCheck | None = None,
        error_body_fn: ErrorBody = error_body,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.head_check = head_check
        self.error_body = error_body_fn
        self.connections: set[_Connection] = set()
        self.per_client: dict[str, int] = {}


# asyncio.Server (and uvloop's Server) take no attributes; keep our side state here.
_STATES: weakref.WeakKeyDictionary[asyncio.AbstractServer, _ServerState] = weakref.WeakKeyDictionary()


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_aborted",
        "_body",
        "_body_bytes",
        "_client",
        "_close_when_idle",
        "_closed",
        "_current",
        "_discard",
        "_discarded",
        "_failed",
        "_header_bytes",
        "_headers",
        "_in_request",
        "_ip",
        "_limits",
        "_loop",
        "_parser",
        "_pending",
        "_reading_paused",
        "_state",
        "_timer",
        "_timer_at",
        "_timer_callback",
        "_timer_deadline",
        "_transport",
        "_url",
        "_writable",
        "_write_paused",
    )

    def __init__(self, state: _ServerState) -> None:
        self._state = state
        self._limits = state.limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._in_request = False
        # Parsed requests not yet answered: (Request, keep_alive, method) or a rejection.
        self._pending: collections.deque = collections.deque()
        self._current: Response | None = None
        self._timer: asyncio.TimerHandle | None = None  # see _set_timer
        self._timer_at = 0.0  # when that handle fires (loop time)
        self._timer_deadline = 0.0  # when the callback is due
        self._timer_callback: Callable[[], None] | None = None
        self._closed = False
        self._failed = False
        self._aborted = False
        self._close_when_idle = False
        self._reading_paused = False
        self._write_paused = False
        self._writable: asyncio.Future | None = None
        self._discard: EarlyAnswer | None = None  # refused from its head: drop the body, then answer
        self._discarded = 0
        self._ip: str | None = None

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._client = (peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None
        state = self._state
        limits = self._limits
        ip = self._client[0] if self._client else ""
        if len(state.connections) >= limits.max_connections:
            self._refuse_connection(f"the server has {limits.max_connections} connections open")
            return
        if state.per_client.get(ip, 0) >= limits.max_connections_per_client:
            self._refuse_connection(f"this address has {limits.max_connections_per_client} connections open")
            return
        self._ip = ip
        state.per_client[ip] = state.per_client.get(ip, 0) + 1
        state.connections.add(self)
        self._set_timer(self._limits.keepalive_timeout_s, self._on_idle_timeout)

    def _refuse_connection(self, why: str) -> None:
        self._failed = True
        self._closed = True
        body = self._state.error_body(503, f"too many connections: {why}")
        self._transport.write(  # type: ignore[union-attr]
            _status_line(503) + b"content-type: application/json\r\nretry-after: 1\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % len(body) + body
        )
        self._transport.close()  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self._failed or self._closed:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_Rejected(400, "protocol upgrade is not supported"))
        except httptools.HttpParserCallbackError as exc:
            rejected = exc.__context__
            if isinstance(rejected, _Rejected):
                self._fail(rejected)
            else:
                log.error("HTTP parser callback failed", exc_info=rejected or exc)
                self._fail(_Rejected(400, "malformed HTTP request"))
        except httptools.HttpParserError as exc:
            self._fail(_Rejected(400, f"malformed HTTP request: {exc}"))

    def eof_received(self) -> bool | None:
        # EOF from the client means it left, as uvicorn and nginx read it: a client that
        # closes its socket while its answer is computed sends exactly this, and without
        # it the engine would keep working for nobody (a half-closing client that still
        # reads is rare enough to lose its answer). Returning None closes the transport;
        # connection_lost then marks the response in progress disconnected.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        state = self._state
        state.connections.discard(self)
        if self._ip is not None:
            left = state.per_client.get(self._ip, 1) - 1
            if left > 0:
                state.per_client[self._ip] = left
            else:
                state.per_client.pop(self._ip, None)
            self._ip = None
        self._drop_timer()
        if self._current is not None:
            self._current._mark_disconnected()
        self._pending.clear()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # --- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_request = True
        self._url = []
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0
        self._discard = None
        self._discarded = 0
        self._set_timer(self._limits.request_timeout_s, self._on_request_timeout)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._header_bytes += len(url)
        if self._header_bytes > self._limits.max_header_bytes:
            raise _Rejected(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._limits.max_header_bytes:
            raise _Rejected(431, f"request headers exceed {self._limits.max_header_bytes} bytes")
        key = _HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_HEADER_NAMES) < _MAX_HEADER_NAMES:
                _HEADER_NAMES[name] = key
        text = value.decode("latin-1")
        headers = self._headers
        if key in headers:
            headers[key] = headers[key] + ", " + text
        else:
            if len(headers) >= self._limits.max_headers:
                raise _Rejected(431, f"more than {self._limits.max_headers} request headers")
            headers[key] = text

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._limits.max_body_bytes:
            raise _Rejected(413, f"request body exceeds {self._limits.max_body_bytes} bytes")
        check = self._state.head_check
        if check is not None:
            url = b"".join(self._url).decode("latin-1")
            method = self._parser.get_method().decode("ascii", "replace")
            answer = check(RequestHead(method, url.split("?", 1)[0], self._headers, self._client))
            if answer is not None:
                if length is not None and length.isdigit() and int(length) > self._limits.max_discard_bytes:
                    raise _Rejected(answer.status, "", answer)  # answer now; the body is never read
                self._discard = answer  # read the (small) body past, keeping none of it
        if self._headers.get("expect", "").lower() == "100-continue" and self._current is None and not self._pending:
            # Nothing else is being written, so the interim answer cannot interleave.
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._discard is not None:
            self._discarded += len(body)
            if self._discarded > self._limits.max_discard_bytes:
                raise _Rejected(self._discard.status, "", self._discard)
            return
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:
            raise _Rejected(413, f"request body exceeds {self._limits.max_body_bytes} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_request = False
        self._cancel_timer()
        if self._discard is not None:
            answer, self._discard = self._discard, None
            self._fail(_Rejected(answer.status, "", answer))
            return
        parser = self._parser
        url = b"".join(self._url)
        if url[:1] == b"/" or url == b"*":
            path, _, query = url.partition(b"?")
        else:  # absolute-form (proxies) — let the real parser split it
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Rejected(400, "invalid request target") from None
            path, query = parsed.path or b"/", parsed.query or b""
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii")
        request = Request(
            method=method,
            path=path.decode("latin-1"),
            query=query.decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body) if len(self._body) != 1 else self._body[0],
            client=self._client,
            http_version=version,
        )
        self._body = []
        self._pending.append((request, parser.should_keep_alive() and version != "1.0"))
        if self._current is None:
            self._start_next()
        elif len(self._pending) >= self._limits.max_pipelined and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]

    # --- request dispatch -----------------------------------------------------------

    def _start_next(self) -> None:
        item = self._pending.popleft()
        if isinstance(item, _Rejected):
            self._write_error_and_close(item)
            return
        request, keep_alive = item
        if self._close_when_idle and not self._pending:
            keep_alive = False
        response = Response(self, keep_alive, request.method == "HEAD", request.http_version == "1.0")
        self._current = response
        self._loop.create_task(self._run(request, response))

    async def _run(self, request: Request, response: Response) -> None:
        try:
            await self._state.handler(request, response)
        except Exception as exc:
            if not response._started:
                log.exception("handler failed: %s %s", request.method, request.path)
                response.send(500, self._state.error_body(500, f"internal server error: {type(exc).__name__}"))
            elif not response._finished:
                log.exception("handler failed mid-stream: %s %s", request.method, request.path)
                # Leave the stream truncated so the client sees an error, not a clean end.
                response._finished = True
                self._abort()
            else:
                log.exception("handler failed after its response: %s %s", request.method, request.path)
        else:
            if not response._started:
                response.send(500, self._state.error_body(500, "handler returned without a response"))
            elif not response._finished:
                response.end()
        if self._current is response:
            # The handler returned before finishing (disconnect path): release the slot.
            self._current = None
            self._after_response()

    def _response_finished(self, response: Response) -> None:
        if self._current is not response:
            return
        self._current = None
        if not response._keep_alive:
            self._close()
            return
        self._after_response()

    def _after_response(self) -> None:
        if self._closed or self._aborted:
            return
        if self._reading_paused and len(self._pending) < self._limits.max_pipelined:
            self._reading_paused = False
            self._transport.resume_reading()  # type: ignore[union-attr]
        if self._pending:
            self._start_next()
        elif self._close_when_idle:
            self._close()
        elif not self._in_request:
            self._set_timer(self._limits.keepalive_timeout_s, self._on_idle_timeout)

    # --- failures and timers --------------------------------------------------------

    def _fail(self, rejected: _Rejected) -> None:
        """Stop parsing; answer after the requests already queued, then close."""
        self._failed = True
        self._cancel_timer()
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()
        if self._current is None and not self._pending:
            self._write_error_and_close(rejected)
        else:
            self._pending.append(rejected)

    def _write_error_and_close(self, rejected: _Rejected) -> None:
        answer = rejected.answer
        if answer is not None:
            status, body, extra = answer.status, answer.body, _header_block(answer.headers)
        else:
            status, body, extra = rejected.status, self._state.error_body(rejected.status, rejected.message), b""
        self._write(
            _status_line(status)
            + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body)
            + extra
            + b"\r\n"
            + body
        )
        self._close()

    def _on_request_timeout(self) -> None:
        if self._closed:
            return
        self._fail(_Rejected(408, f"request not received within {self._limits.request_timeout_s:g} s"))

    def _on_idle_timeout(self) -> None:
        if self._current is None and not self._pending and not self._in_request:
            self._close()

    def _set_timer(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` after ``delay`` seconds unless re-set or cancelled first.

        One timer handle per connection, re-armed only when it fires early: a request
        sets a deadline twice (its own timeout, then the keep-alive idle time) and
        cancels once, and a timer created and cancelled each time cost a heap insert,
        a cancel and a handle close per request. The handle fires at least every
        ``request_timeout_s`` and checks the deadline then; a deadline earlier than the
        armed handle re-arms it. Never late by more than the loop's own lag."""
        loop = self._loop
        now = loop.time()
        deadline = now + delay
        self._timer_deadline = deadline
        self._timer_callback = callback
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = now + min(delay, self._limits.request_timeout_s)
            self._timer = loop.call_at(self._timer_at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        callback = self._timer_callback
        if callback is None or self._closed:
            return
        now = self._loop.time()
        if now < self._timer_deadline:
            self._timer_at = min(self._timer_deadline, now + self._limits.request_timeout_s)
            self._timer = self._loop.call_at(self._timer_at, self._on_timer)
            return
        self._timer_callback = None
        callback()

    def _cancel_timer(self) -> None:
        """No callback is due; the handle (if any) stays armed and finds nothing to do."""
        self._timer_callback = None

    def _drop_timer(self) -> None:
        self._timer_callback = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- writing --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self._closed and not self._aborted:
            self._transport.write(data)  # type: ignore[union-attr]

    def _check_write_buffer(self) -> None:
        if self._transport.get_write_buffer_size() > self._limits.max_write_buffer_bytes:  # type: ignore[union-attr]
            log.warning("client %s does not read its response; aborting the connection", self._client)
            self._abort()

    async def _wait_writable(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._writable), self._limits.write_stall_timeout_s)
        except TimeoutError:
            log.warning("client %s stalled reading for %gs; aborting", self._client, self._limits.write_stall_timeout_s)
            self._abort()

    def _wake_writer(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _close(self) -> None:
        if not self._closed and self._transport is not None:
            self._cancel_timer()
            self._transport.close()  # flushes what is buffered first

    def _abort(self) -> None:
        self._failed = True  # parse nothing more from this connection
        self._aborted = True
        if self._transport is not None and not self._closed:
            self._transport.abort()
        if self._current is not None:
            self._current._mark_disconnected()

    def _close_gracefully(self) -> None:
        """Close now if idle, otherwise after the response in progress."""
        if self._current is None and not self._pending:
            self._close()
        else:
            self._close_when_idle = True


async def start_server(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    reuse_port: bool = False,
    limits: Limits | None = None,
    backlog: int = 4096,
    head_check: HeadCheck | None = None,
    error_body_fn: ErrorBody = error_body,
) -> asyncio.AbstractServer:
    """Listen on ``host:port`` and answer each request with ``await handler(request, response)``.

    Runs on whatever loop is running; install uvloop (``uvloop.run(main())``) for the
    throughput docs/router.md reports. ``port=0`` picks a free port: read it back from
    ``server.sockets[0].getsockname()[1]``.
    """
    state = _ServerState(handler, limits or Limits(), head_check, error_body_fn)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(state), host, port, reuse_port=reuse_port or None, backlog=backlog
    )
    _STATES[server] = state
    return server


def close_connections(server: asyncio.AbstractServer) -> int:
    """Close the server's idle keep-alive connections now and the busy ones after their
    current response (graceful drain). Returns how many connections were open."""
    state = _STATES.get(server)
    if state is None:
        return 0
    connections = list(state.connections)
    for conn in connections:
        conn._close_gracefully()
    return len(connections)


def port_of(server: asyncio.AbstractServer) -> int:
    """The TCP port the server listens on (useful with ``port=0``)."""
    return server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]


async def serve_until_signalled(server: asyncio.AbstractServer) -> None:
    """Serve until SIGINT or SIGTERM, then stop accepting and drain the connections
    (idle ones close now, busy ones after their current response)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    close_connections(server)


def tcp_port(text: str) -> int:
    """argparse type for a listening port: the OS would silently take a larger number
    modulo 65536 and serve somewhere else."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in [0, 65535], got {text}")
    return value
