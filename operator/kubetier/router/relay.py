"""Relaying an engine's answer to the client: whole answers and server-sent event streams.

The relay forwards complete server-sent events as they arrive (one ``rfind`` and one
``count`` per batch of bytes, no JSON per token), straight from the upstream
connection's read callback while the request's task waits (``EventRelay.feed`` as the
client's sink): a token costs no task wake-up, future or coroutine.

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

from kubetier.lean_http import Request, Response, error_body
from kubetier.lean_http.client import UpstreamError, UpstreamResponse
from kubetier.router.context import RequestContext
from kubetier.router.resume import build_resume_body

if TYPE_CHECKING:
    from kubetier.router.forwarding import Forwarder

log = logging.getLogger("kubetier.router")

TOKEN_MARK = b'"choices":[{'  # one per token event (the usage event has "choices":[])
ROLE_MARK = b'"role":"assistant"'
DONE = b"data: [DONE]"


async def relay_whole(res: Response, upr: UpstreamResponse, ctx: RequestContext, timeout_s: float) -> str:
    try:
        data = await upr.read_all(timeout=timeout_s)
    except UpstreamError as exc:
        upr.close()
        ctx.release()
        res.send(502, error_body(502, f"upstream failed: {exc}"))
        return "upstream_error"
    upr.close()
    now = time.monotonic()
    ok = upr.status == 200
    if ok:
        try:
            n = int(json.loads(data).get("usage", {}).get("completion_tokens", 0))
        except (ValueError, AttributeError, TypeError):
            n = 0
        ctx.first_at = ctx.last_at = now
        ctx.tokens = ctx.tokens_on_server = n
        # Deadline of the last token: arrival + TTFT + (n - 1) x TPOT.
        ctx.missed = now > ctx.arrival + ctx.ttft_s + max(0, n - 1) * ctx.tpot_s
    ctx.release()
    ctype = upr.headers.get("content-type", "application/json")
    res.send(upr.status, data, content_type=ctype)
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
    sent: list[bytes] = []  # complete events relayed: the text to resume from
    migrations = 0
    drop_role = False
    while True:
        # A client that goes away cuts the upstream at once: the engine frees the slot.
        res.add_disconnect_callback(upr.close)
        failure = await pump_events(res, upr, ctx, sent, drop_role, settings.stall_timeout_s)
        upr.close()
        if failure is None:
            ctx.release()
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
        resume = build_resume_body(body, chat, sent)
        if resume is None:
            return stream_error(res, f"stream failed ({failure}) and cannot be resumed (token-id prompt)")
        new_body, done_tokens = resume
        if new_body is None:  # every requested token was already sent
            res.write(b"data: [DONE]\n\n")
            res.end()
            return "ok"
        fwd.count_migration(ctx)
        cand = await fwd.reopen(req.path, new_body, ctx, ctx.prompt_tokens + done_tokens, failed_sid)
        if cand is None:
            return stream_error(res, f"stream failed ({failure}) and no server could resume it")
        upr = cand
        drop_role = chat


async def pump_events(
    res: Response, upr: UpstreamResponse, ctx: RequestContext, sent: list[bytes], drop_role: bool, stall: float
) -> str | None:
    """Relay complete events until the upstream ends. None = finished normally.

    While this task waits, the upstream connection hands each read straight to
    ``relay.feed`` (``set_sink``): no task wake-up per event. The task wakes at the
    end, on failure or stall, and when the client is slow (to drain) or gone."""
    relay = EventRelay(res, ctx, sent, drop_role)
    read = upr.read_nowait
    upr.set_sink(relay.feed)
    try:
        while True:
            try:
                data = read()
                if data is None:
                    try:
                        await upr.wait_readable(stall)
                    except TimeoutError:
                        raise upr.stalled(stall) from None
                    data = b""  # the sink may have relayed while we waited
                elif not data:
                    return None if relay.done else "upstream ended without [DONE]"
            except UpstreamError as exc:
                # Lost after [DONE]: the client already has the whole stream.
                return None if relay.done else str(exc)
            if data:
                relay.feed(data)
            if res.writing_paused:  # drain() only when it would wait: no coroutine per chunk
                await res.drain()
            if res.disconnected:
                return "client-gone"
    finally:
        upr.set_sink(None)


def stream_error(res: Response, message: str) -> str:
    log.warning("stream error: %s", message)
    ev = json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": 502}})
    res.write(b"data: " + ev.encode() + b"\n\n")
    res.end()
    return "upstream_error"


class EventRelay:
    """One upstream stream's relay state: complete events out, SLO accounting per batch
    (one ``rfind`` and one ``count`` per read, no JSON per token)."""

    __slots__ = ("ctx", "done", "drop_role", "res", "sent", "tail")

    def __init__(self, res: Response, ctx: RequestContext, sent: list[bytes], drop_role: bool) -> None:
        self.res = res
        self.ctx = ctx
        self.sent = sent  # complete events relayed: the text to resume from
        self.tail = b""  # an incomplete event, kept for the next read
        self.done = False  # [DONE] relayed
        self.drop_role = drop_role  # a resumed chat stream: drop its opening role chunk

    def feed(self, data: bytes) -> bool:
        """Relay the complete events in ``data``. False when the pump must act (the
        client is slow to read or gone), so the upstream stops feeding and wakes it."""
        if self.tail:
            data = self.tail + data
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self.tail = data
            return True
        cut += 2
        out = data[:cut]
        self.tail = data[cut:]
        if self.drop_role and ROLE_MARK in out:
            out = b"".join(e + b"\n\n" for e in out.split(b"\n\n") if e and ROLE_MARK not in e)
            self.drop_role = False
            if not out:
                return True
        n = out.count(TOKEN_MARK)
        if n:
            ctx = self.ctx
            now = time.monotonic()
            if ctx.tokens == 0 and ROLE_MARK in out:
                n -= 1  # the chat stream's opening role chunk carries no token
            if n > 0:
                if ctx.first_at == 0.0:
                    ctx.first_at = now
                if not ctx.prefilled and ctx.server is not None:
                    ctx.prefilled = True
                    ctx.fleet.prefill_done(ctx.server.spec.server_id, ctx.prompt_tokens_on_server)
                # Deadline of the batch's earliest token (index ctx.tokens, from 0).
                if now > ctx.arrival + ctx.ttft_s + ctx.tokens * ctx.tpot_s:
                    ctx.missed = True
                ctx.tokens += n
                ctx.tokens_on_server += n
                ctx.last_at = now
        if not self.done and DONE in out:
            self.done = True
        res = self.res
        res.write(out)
        self.sent.append(out)
        return not (res.writing_paused or res.disconnected)
