"""Relaying an engine's answer to the client: whole answers and server-sent event streams.

The relay forwards complete server-sent events as they arrive, straight from the
upstream connection's read callback while the request's task waits (the relay is the
connection's sink): a token costs no task wake-up, future or coroutine, and no JSON.

Two relays, one accounting:

- ``FramedRelay`` (the common case: an engine answering in the chunked coding, a client
  on HTTP/1.1): the engine's bytes go to the client *as received*, chunk framing
  included: no parsing into events, no re-framing, one ``write`` per read. A read is
  passed on when it ends on both a chunk and an event boundary (``...\n\n\r\n``);
  otherwise it waits for the rest, so the client only ever holds whole events (a
  resumption can continue from there). Per read: one ``endswith``, one ``count``.
- ``EventRelay``: decoded body bytes (an HTTP/1.0 client, an engine without chunked
  framing, and every resumed stream, whose chunk ids and usage are rewritten):
  complete events are re-framed by ``Response.write`` (one ``rfind`` and one ``count``
  per read).

A stream that breaks mid-way is resumed on another server (``Forwarder.reopen``) with
what the client already has, and the resumed stream's opening role chunk dropped, so
the client sees one stream. If that is impossible the client gets an explicit
``{"error": ...}`` event.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from kubetier.lean_http import Request, Response
from kubetier.lean_http.client import UpstreamError, UpstreamResponse
from kubetier.lean_http.errors import openai_error_body
from kubetier.router.context import RequestContext
from kubetier.router.resume import build_resume_body

if TYPE_CHECKING:
    from kubetier.router.forwarding import Forwarder

log = logging.getLogger("kubetier.router")

TOKEN_MARK = b'"choices":[{'  # one per token event (the usage event has "choices":[])
ROLE_MARK = b'"role":"assistant"'
DONE = b"data: [DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
EVENT_CHUNK_END = b"\n\n\r\n"  # an event's blank line, then the chunk's CRLF
DONE_CHUNK_END = b"data: [DONE]\n\n\r\n"


async def relay_whole(res: Response, upr: UpstreamResponse, ctx: RequestContext, timeout_s: float) -> str:
    """A whole (non-streamed) answer. The client leaving cuts the engine's connection,
    so the engine aborts the request; running past ``timeout_s`` (derived from the
    request) is answered 504 and never retried: a slow answer is not a failed server."""
    res.add_disconnect_callback(lambda: upr.fail("the client went away"))
    try:
        data = await upr.read_all(timeout=timeout_s)
    except UpstreamError as exc:
        upr.close()
        ctx.release()
        if res.disconnected:
            return "client_disconnected"
        if exc.timeout:
            res.send(504, openai_error_body(504, f"the engine did not finish the answer within {timeout_s:.0f} s"))
            return "timeout"
        res.send(502, openai_error_body(502, f"upstream failed: {exc}"))
        return "upstream_error"
    upr.close()
    now = time.monotonic()
    ok = upr.status == 200
    if ok:
        try:
            n = int(json.loads(data).get("usage", {}).get("completion_tokens", 0))
        except (ValueError, AttributeError, TypeError, RecursionError):
            n = 0
        ctx.first_at = ctx.last_at = now
        ctx.tokens = ctx.tokens_on_server = n
        # Deadline of the last token: arrival + TTFT + (n - 1) x TPOT.
        ctx.missed = now > ctx.arrival + ctx.ttft_s + max(0, n - 1) * ctx.tpot_s
    ctx.at_admit = None  # a whole answer's timing is not a first token's: nothing to learn
    ctx.release(done=ok)
    ctype = upr.headers.get("content-type", "application/json")
    res.send(upr.status, data, [("x-kubetier-tier", ctx.tier)], content_type=ctype)
    return "ok" if ok else f"upstream_{upr.status}"


async def relay_stream(
    fwd: Forwarder,
    req: Request,
    res: Response,
    upr: UpstreamResponse,
    body: dict[str, Any],
    chat: bool,
    ctx: RequestContext,
) -> str:
    fleet = ctx.fleet
    settings = fwd.settings
    res.start_stream(200, [("x-kubetier-tier", ctx.tier)])
    state = StreamState()
    migrations = 0
    first_token_stall = fwd.first_token_timeout_s(ctx)
    while True:
        # A client that goes away cuts the upstream at once: the engine frees the slot.
        res.add_disconnect_callback(upr.close)
        sid = ctx.server.spec.server_id if ctx.server else ""
        cut = upr.fail
        fleet.track_stream(sid, cut)  # an engine marked unready cuts it: resumed at once
        try:
            failure = await pump_events(res, upr, ctx, state, settings.stall_timeout_s, first_token_stall)
        finally:
            fleet.untrack_stream(sid, cut)
        upr.close()
        if failure is None:
            ctx.release(done=True)
            res.end()
            return "ok"
        if failure == "client-gone" or res.disconnected:
            ctx.release()
            return "client_disconnected"
        # Mid-stream failure: resume elsewhere with what the client already has.
        failed_sid = ctx.server.spec.server_id if ctx.server else None
        ctx.release()
        if failed_sid:
            fleet.mark_unhealthy(failed_sid)
        migrations += 1
        if migrations > settings.max_migrations:
            return stream_error(
                res, f"stream failed ({failure}) and {settings.max_migrations} resumptions were used up"
            )
        resume = build_resume_body(body, chat, state.relayed_events())
        if resume is None:
            return stream_error(res, f"stream failed ({failure}) and cannot be resumed (token-id prompt)")
        new_body, done_tokens = resume
        if new_body is None:  # every requested token was already sent
            res.write(b"data: [DONE]\n\n")
            res.end()
            return "ok"
        fwd.count_migration(ctx)
        cand = await fwd.reopen(req.path, new_body, ctx, ctx.prompt_tokens + done_tokens, failed_sid, res)
        if cand is None:
            if res.disconnected:
                return "client_disconnected"
            return stream_error(res, f"stream failed ({failure}) and no server could resume it")
        upr = cand
        state.begin_resume(done_tokens, drop_role=chat)


async def pump_events(
    res: Response, upr: UpstreamResponse, ctx: RequestContext, state: StreamState, stall: float, first_stall: float
) -> str | None:
    """Relay complete events until the upstream ends. None = finished normally.

    While this task waits, the upstream connection hands each read straight to
    ``relay.feed`` (``set_sink``): no task wake-up per event. The task wakes at the
    end, on failure or stall, and when the client is slow (to drain) or gone.
    Stalls are measured from the last byte: ``first_stall`` until this upstream's first
    token (queueing and prefill), ``stall`` after it."""
    framed = upr.passthrough and res.chunked and not state.resumed
    relay: EventRelay | FramedRelay = FramedRelay(res, ctx, state) if framed else EventRelay(res, ctx, state)
    # The first token switches the stall timeout from ``first_stall`` to ``stall``: only
    # when they differ must the relay wake this task to re-arm it (one task step through
    # the request's coroutines per stream, measured among its per-request costs).
    relay.rearm = first_stall != stall
    read = upr.read_nowait
    upr.set_sink(relay.feed)
    try:
        while True:
            try:
                data = read()
                if data is None:
                    wait = stall if ctx.tokens_on_server else first_stall
                    try:
                        await upr.wait_readable(wait)
                    except TimeoutError:
                        raise upr.stalled(wait) from None
                    data = b""  # the sink may have relayed while we waited
                elif not data:
                    if isinstance(relay, FramedRelay):
                        relay.finish()
                    return None if relay.done else "upstream ended without [DONE]"
            except UpstreamError as exc:
                # Lost after [DONE]: the client already has the whole stream.
                return None if relay.done else str(exc)
            if data:
                if isinstance(relay, FramedRelay):
                    relay.feed(data, upr.chunk_aligned)
                else:
                    relay.feed(data)
            if res.writing_paused:  # drain() only when it would wait: no coroutine per chunk
                await res.drain()
            if res.disconnected:
                return "client-gone"
    finally:
        upr.set_sink(None)


def stream_error(res: Response, message: str) -> str:
    log.warning("stream error: %s", message)
    ev = json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": "upstream_error"}})
    res.write(b"data: " + ev.encode() + b"\n\n")
    res.end()
    return "upstream_error"


class StreamState:
    """One client stream across resumptions: the events it got (read back only to
    resume: the first engine's reads as relayed, framing included, then the decoded
    events of resumed engines), its chunk id, and the correction a resumed engine's
    usage needs."""

    __slots__ = ("chunk_id", "done_tokens", "drop_role", "engine_id", "framed", "resumed", "sent")

    def __init__(self) -> None:
        self.framed: list[bytes] = []  # FramedRelay: the reads as relayed (kept, not copied)
        self.sent = bytearray()  # EventRelay: the events as relayed
        self.chunk_id: bytes | None = None  # b'"id":"..."' of the first engine's chunks
        self.engine_id: bytes | None = None  # the same for the engine now streaming
        self.resumed = False
        self.done_tokens = 0  # tokens the client had when the current engine started
        self.drop_role = False  # a resumed chat stream: drop its opening role chunk

    def relayed_events(self) -> bytes:
        """Every event the client got so far, without chunk framing (read on resumption)."""
        return unchunk(b"".join(self.framed)) + bytes(self.sent)

    def begin_resume(self, done_tokens: int, drop_role: bool) -> None:
        self.resumed = True
        self.engine_id = None
        self.done_tokens = done_tokens
        self.drop_role = drop_role

    def rewrite(self, out: bytes) -> bytes:
        """A resumed engine's events as the first engine would have sent them: the first
        chunk id, and usage counting the original prompt plus every generated token.
        Only resumed streams pay for this."""
        if self.engine_id is None:
            self.engine_id = _chunk_id(out)
        if self.engine_id and self.chunk_id and self.engine_id != self.chunk_id:
            out = out.replace(self.engine_id, self.chunk_id)
        if b'"usage":{' in out:
            events = out.split(b"\n\n")
            for i, e in enumerate(events):
                if b'"usage":{' in e and e.startswith(b"data: {"):
                    events[i] = _fix_usage(e, self.done_tokens)
            out = b"\n\n".join(events)
        return out


def unchunk(data: bytes) -> bytes:
    """The payload of whole chunks in the chunked transfer coding (what FramedRelay passed
    on always ends on a chunk boundary)."""
    out = []
    pos, n = 0, len(data)
    while pos < n:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            break
        try:
            size = int(data[pos:eol].split(b";", 1)[0], 16)
        except ValueError:
            break
        if size <= 0:
            break
        out.append(data[eol + 2 : eol + 2 + size])
        pos = eol + 4 + size
    return b"".join(out)


def _chunk_id(out: bytes) -> bytes | None:
    i = out.find(b'"id":"')
    if i < 0:
        return None
    j = out.find(b'"', i + 6)
    return out[i : j + 1] if j > 0 else None


def _fix_usage(event: bytes, done_tokens: int) -> bytes:
    try:
        ev = json.loads(event[6:])
        u = ev["usage"]
        prompt = int(u["prompt_tokens"]) - done_tokens  # the resumed prompt held the sent tokens
        completion = int(u["completion_tokens"]) + done_tokens
    except (ValueError, KeyError, TypeError):
        return event
    u["prompt_tokens"] = max(prompt, 0)
    u["completion_tokens"] = completion
    u["total_tokens"] = max(prompt, 0) + completion
    return b"data: " + json.dumps(ev, separators=(",", ":")).encode()


class EventRelay:
    """One upstream stream's relay state: complete events out, SLO accounting per batch
    (one ``rfind`` and one ``count`` per read, no JSON per token)."""

    __slots__ = ("ctx", "done", "rearm", "res", "state", "tail")

    def __init__(self, res: Response, ctx: RequestContext, state: StreamState) -> None:
        self.res = res
        self.ctx = ctx
        self.state = state
        self.tail = b""  # an incomplete event, kept for the next read
        self.done = False  # [DONE] relayed
        self.rearm = True  # wake the pump at the first token (its stall timeout changes)

    def feed(self, data: bytes) -> bool:
        """Relay the complete events in ``data``. False when the pump must act (the
        client is slow to read or gone), so the upstream stops feeding and wakes it."""
        if self.tail:
            data = self.tail + data
            self.tail = b""
        if data.endswith(b"\n\n"):  # the common case: whole events, passed on as they came
            out = data
        else:
            cut = data.rfind(b"\n\n")
            if cut < 0:
                self.tail = data
                return True
            cut += 2
            out = data[:cut]
            self.tail = data[cut:]
        state = self.state
        if state.resumed:
            if state.drop_role and ROLE_MARK in out:
                out = b"".join(e + b"\n\n" for e in out.split(b"\n\n") if e and ROLE_MARK not in e)
                state.drop_role = False
                if not out:
                    return True
            out = state.rewrite(out)
        elif state.chunk_id is None:
            state.chunk_id = _chunk_id(out)
        n = out.count(TOKEN_MARK)
        wake = False
        if n:
            ctx = self.ctx
            now = time.monotonic()
            if ctx.tokens == 0 and ROLE_MARK in out:
                n -= 1  # the chat stream's opening role chunk carries no token
            if n > 0:
                if ctx.first_at == 0.0:
                    ctx.first_at = now
                if ctx.tokens_on_server == 0:
                    wake = self.rearm  # once per engine: the pump re-arms the stall timer (first token -> next)
                if not ctx.prefilled and ctx.server is not None:
                    ctx.prefilled = True
                    ctx.fleet.prefill_done(ctx.server.spec.server_id, ctx.prompt_tokens_on_server)
                # Deadline of the batch's earliest token (index ctx.tokens, from 0).
                if now > ctx.arrival + ctx.ttft_s + ctx.tokens * ctx.tpot_s:
                    ctx.missed = True
                ctx.tokens += n
                ctx.tokens_on_server += n
                ctx.last_at = now
        if out.endswith(DONE_EVENT) or (not self.done and DONE in out):
            self.done = True
        state.sent += out
        # write() says whether the client keeps up (False: slow to read, or gone).
        return self.res.write(out) and not wake


class FramedRelay:
    """Passthrough: the engine's chunked bytes go to the client unchanged (see the module
    doc). The same accounting as ``EventRelay``, on the framed bytes (the framing itself
    never contains the markers counted), with the per-read work cut to the bone: the
    first token's bookkeeping runs once (``fresh``), the next token's deadline is kept
    ready (``deadline``), the client's write and the kept-reads list are bound once."""

    __slots__ = ("ctx", "deadline", "done", "fresh", "keep", "rearm", "res", "state", "tail", "tpot", "write")

    def __init__(self, res: Response, ctx: RequestContext, state: StreamState) -> None:
        self.res = res
        self.ctx = ctx
        self.state = state
        self.write = res.write_framed
        self.keep = state.framed.append
        self.tail = b""  # reads that did not end on a chunk and event boundary yet
        self.done = False  # [DONE] relayed
        self.fresh = True  # no token from this engine yet
        self.rearm = True  # wake the pump at the first token (its stall timeout changes)
        self.tpot = ctx.tpot_s
        # Deadline of the next token (index ctx.tokens, from 0): arrival + TTFT + index x TPOT.
        self.deadline = ctx.arrival + ctx.ttft_s + ctx.tokens * ctx.tpot_s

    def feed(self, data: bytes, aligned: bool) -> bool:
        """Relay ``data`` (framed) if it ends on a chunk and event boundary, else keep it.
        False when the pump must act (the client is slow to read or gone, or the first
        token came: the stall timer is re-armed)."""
        if self.tail:
            data = self.tail + data
            self.tail = b""
        # ``[-5] != CR``: a 1-byte "\n" chunk's size line would look like an event end.
        if not aligned or not data.endswith(EVENT_CHUNK_END) or data[-5] == 13:
            self.tail = data
            return True
        n = data.count(TOKEN_MARK)
        if n:
            now = time.monotonic()
            ctx = self.ctx
            if self.fresh:
                n = self._first(data, n, now)
                if n == 0:
                    self.keep(data)
                    return self.write(data)
                wake = self.rearm  # the pump re-arms the stall timer (first token -> next)
            else:
                wake = False
            if now > self.deadline:
                ctx.missed = True
            self.deadline += n * self.tpot
            ctx.tokens += n
            ctx.tokens_on_server += n
            ctx.last_at = now
            if data.endswith(DONE_CHUNK_END):
                self.done = True
            self.keep(data)
            return self.write(data) and not wake
        if DONE in data:
            self.done = True
        self.keep(data)
        return self.write(data)

    def _first(self, data: bytes, n: int, now: float) -> int:
        """The first read with token marks from this engine: the tokens in it (a chat
        stream's opening role chunk carries none), first-token time, prefill done."""
        ctx = self.ctx
        state = self.state
        if state.chunk_id is None:
            state.chunk_id = _chunk_id(data)
        if ctx.tokens == 0 and ROLE_MARK in data:
            n -= 1
        if n <= 0:
            return 0
        self.fresh = False
        if ctx.first_at == 0.0:
            ctx.first_at = now
        if not ctx.prefilled and ctx.server is not None:
            ctx.prefilled = True
            ctx.fleet.prefill_done(ctx.server.spec.server_id, ctx.prompt_tokens_on_server)
        return n

    def finish(self) -> None:
        """The body ended: complete events still held (the last read did not end on an
        event boundary) go out re-framed, as ``EventRelay`` would send them."""
        if self.tail:
            tail, self.tail = unchunk(self.tail), b""
            rest = EventRelay(self.res, self.ctx, self.state)
            rest.feed(tail)
            self.done = self.done or rest.done
