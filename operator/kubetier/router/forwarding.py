"""Getting a request onto a server: admission through the fleet's policy, retries on
another server before the first byte, and reopening a stream elsewhere to resume it.

- Before the first byte reaches the client, a server that fails (connection refused,
  engine 5xx) is marked not ready until its next good health check and the request goes
  to another one, up to ``max_attempts`` servers.
- Timeouts come from the request, not a constant: a whole answer may take
  ``slack x (TTFT + max_tokens x TPOT) + floor`` (the tier's targets), a stream's first
  token ``slack x TTFT + floor``, later tokens ``stall_timeout_s`` from the last byte. A
  whole answer that runs past its time is a 504, never retried and never counted
  against the server: a slow answer is not a failure.
- A client that leaves (while waiting for a server, for the engine's answer, or
  mid-stream) cuts the engine's connection, so the engine aborts the request.
- Refusals say whose problem it is: load shedding (the tier cannot meet its target now,
  the wait queue is full, a queueing tier's deadline passed) is 429; an outage (no
  ready server can take the tier, none came in time, every server failed to connect) is
  503; engines answering 5xx on every attempt is 502. All with ``Retry-After`` where a
  retry can help, and OpenAI-style bodies with a string ``code``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from kubetier.lean_http import Request, Response
from kubetier.lean_http.client import UpstreamError, UpstreamResponse
from kubetier.lean_http.errors import openai_error_body
from kubetier.router.context import RequestContext, ServeSettings
from kubetier.router.fleet import ClientGone, NoAlternative, NoServer, QueueFull, QueueTimeout, Rejected
from kubetier.router.metrics import RouterMetrics
from kubetier.router.relay import relay_stream, relay_whole
from kubetier.router.scale_from_zero import MAX_REQUEUES, SCALE_FROM_ZERO_LATE, engine_not_serving_yet

JSON_HEADERS = (("content-type", "application/json"),)  # a tuple: the pool caches the request head
_ASK_TOKEN_IDS = b'{"return_token_ids":true,'


def with_token_ids(raw: bytes) -> bytes:
    """The body asking the engine for token ids (vLLM ``return_token_ids``), spliced in
    without re-encoding; a client's own ``return_token_ids`` comes later and wins."""
    i = raw.find(b"{")
    return _ASK_TOKEN_IDS + raw[i + 1 :] if i >= 0 else raw


class Forwarder:
    def __init__(self, settings: ServeSettings, metrics: RouterMetrics) -> None:
        self.settings = settings
        self.metrics = metrics

    # ------------------------------------------------------------------ timeouts

    def first_token_timeout_s(self, ctx: RequestContext) -> float:
        """How long a stream may go without its first token before its engine is taken
        for stalled. Never shorter than the mid-stream stall timeout: an engine that
        queues a request under load is slow, not broken, and moving the request would
        only add load (health checks catch a dead engine, and its streams move then)."""
        s = self.settings
        return max(s.stall_timeout_s, s.timeout_floor_s + s.timeout_slack * ctx.ttft_s)

    def whole_answer_timeout_s(self, ctx: RequestContext, max_tokens: int) -> float:
        s = self.settings
        return s.timeout_floor_s + s.timeout_slack * (ctx.ttft_s + max_tokens * ctx.tpot_s)

    # ------------------------------------------------------------------ serving

    def _refuse(self, res: Response, ctx: RequestContext, status: int, reason: str, message: str, retry: float) -> str:
        m = self.metrics
        m.rejections.labels(ctx.fleet.name, ctx.tier, m.worker, reason).inc()
        if status == 429:  # a 503 is counted as failed from its outcome
            m.tally(ctx.fleet.name, ctx.tier).rejected += 1
        secs = max(1, math.ceil(retry))
        res.send(status, openai_error_body(status, f"{message}; retry after {secs} s"), [("retry-after", str(secs))])
        return "rejected" if status == 429 else "unavailable"

    async def serve(
        self,
        req: Request,
        res: Response,
        body: dict[str, Any],
        chat: bool,
        stream: bool,
        ctx: RequestContext,
        max_tokens: int,
    ) -> str:
        """Serve the request; returns its outcome label."""
        fleet = ctx.fleet
        m = self.metrics
        labels = (fleet.name, ctx.tier, m.worker)
        raw = req.body
        if stream and not chat and self.settings.resume_by_token_ids:
            raw = with_token_ids(raw)
        path = req.path
        head_timeout = self.first_token_timeout_s(ctx) if stream else self.whole_answer_timeout_s(ctx, max_tokens)
        # A stream to an HTTP/1.1 client: the engine's chunks are relayed as received (relay.py).
        passthrough = stream and res.chunked

        def watch(cancel) -> None:
            res.add_disconnect_callback(lambda: cancel("the client went away"))

        attempts = 0
        max_attempts = self.settings.max_attempts
        last_error = "no server answered"
        engine_5xx = False
        tried: frozenset[str] = frozenset()
        requeues = 0
        while attempts < max_attempts:
            attempts += 1
            try:
                up, spilled = await fleet.acquire(
                    ctx.tier, ctx.prompt_tokens, ctx.arrival, tried, gone=lambda: res.disconnected
                )
            except Rejected as exc:
                if not fleet.can_serve(ctx.tier) and exc.reason != SCALE_FROM_ZERO_LATE:
                    return self._refuse(
                        res, ctx, 503, "no-server", f"no server for tier '{ctx.tier}' is ready", exc.retry_after_s
                    )
                return self._refuse(
                    res,
                    ctx,
                    429,
                    exc.reason,
                    f"tier '{ctx.tier}' cannot meet its time-to-first-token target now ({exc.reason})",
                    exc.retry_after_s,
                )
            except QueueFull:
                return self._refuse(res, ctx, 429, "queue-full", "the router's wait queue is full", 1.0)
            except QueueTimeout as exc:
                return self._refuse(
                    res,
                    ctx,
                    429,
                    "queue-deadline",
                    f"tier '{ctx.tier}' had no free server within its {exc.waited_s:.0f} s queue deadline",
                    1.0,
                )
            except NoServer as exc:
                return self._refuse(
                    res,
                    ctx,
                    503,
                    "no-server",
                    f"no server for tier '{ctx.tier}' is ready and none became ready within {exc.waited_s:.1f} s",
                    exc.retry_after_s,
                )
            except NoAlternative:
                break
            except ClientGone:
                return "client_disconnected"
            if spilled and attempts == 1:
                m.spills.labels(*labels).inc()
                m.tally(fleet.name, ctx.tier).spilled += 1
            ctx.on_server(up, ctx.prompt_tokens)
            tried = tried | {up.spec.server_id}
            try:
                upr = await up.pool.request(
                    "POST",
                    path,
                    raw,
                    JSON_HEADERS,
                    header_timeout_s=head_timeout,
                    on_sent=watch,
                    passthrough=passthrough,
                )
            except UpstreamError as exc:
                ctx.release()
                if res.disconnected:
                    return "client_disconnected"
                if exc.timeout and not stream:
                    # Slow, not broken: no retry (the work would start over), no blame.
                    res.send(
                        504,
                        openai_error_body(504, f"the engine did not finish the answer within {head_timeout:.0f} s"),
                    )
                    return "timeout"
                fleet.mark_unhealthy(up.spec.server_id)
                last_error = str(exc)
                self._count_retry(ctx, attempts)
                continue
            if upr.status >= 500:
                # An engine error before any token: another server may do better.
                try:
                    err = await upr.read_all(timeout=5.0)
                except UpstreamError:
                    err = b""
                upr.close()
                ctx.release()
                if requeues < MAX_REQUEUES and engine_not_serving_yet(upr.status, err):
                    # Ready to Kubernetes, still loading (or asleep) to the engine: hold the
                    # request again until the engine's /health passes, not an error.
                    requeues += 1
                    attempts -= 1
                    tried = tried - {up.spec.server_id}
                    fleet.mark_unhealthy(up.spec.server_id)
                    continue
                engine_5xx = True
                last_error = f"server {up.spec.server_id} answered {upr.status}"
                self._count_retry(ctx, attempts)
                continue
            if upr.status != 200 or not stream:
                return await relay_whole(res, upr, ctx, head_timeout)
            return await relay_stream(self, req, res, upr, body, chat, ctx)
        message = f"no server could serve the request after {attempts} attempts: {last_error}"
        if engine_5xx:
            res.send(502, openai_error_body(502, message))
            return "upstream_error"
        res.send(503, openai_error_body(503, message), [("retry-after", "1")])
        return "upstream_error"

    async def reopen(
        self,
        path: str,
        new_body: bytes,
        ctx: RequestContext,
        prompt_tokens: int,
        failed_sid: str | None,
        res: Response,
    ) -> UpstreamResponse | None:
        """A stream continuing a broken one on another server, or None."""
        fleet = ctx.fleet
        tried = frozenset({failed_sid}) if failed_sid else frozenset()
        timeout = self.first_token_timeout_s(ctx)
        for _ in range(self.settings.max_attempts):
            if res.disconnected:
                return None
            try:
                up, _spilled = await fleet.acquire(ctx.tier, prompt_tokens, time.monotonic(), tried)
            except (Rejected, QueueFull, NoAlternative, NoServer, QueueTimeout):
                return None
            ctx.on_server(up, prompt_tokens)
            tried = tried | {up.spec.server_id}
            try:
                cand = await up.pool.request("POST", path, new_body, JSON_HEADERS, header_timeout_s=timeout)
            except UpstreamError:
                ctx.release()
                fleet.mark_unhealthy(up.spec.server_id)
                continue
            if cand.status != 200:
                cand.close()
                ctx.release()
                continue
            return cand
        return None

    def count_migration(self, ctx: RequestContext) -> None:
        self.metrics.migrations.labels(ctx.fleet.name, ctx.tier, self.metrics.worker).inc()
        self.metrics.tally(ctx.fleet.name, ctx.tier).migrations += 1

    def _count_retry(self, ctx: RequestContext, attempts: int) -> None:
        if attempts < self.settings.max_attempts:
            self.metrics.retries.labels(ctx.fleet.name, ctx.tier, self.metrics.worker).inc()
            self.metrics.tally(ctx.fleet.name, ctx.tier).retries += 1
