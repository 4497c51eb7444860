"""Getting a request onto a server: admission through the fleet's policy, retries on
another server before the first byte, and reopening a stream elsewhere to resume it.

Before the first byte reaches the client a failed server (connection refused, engine
5xx) is marked not ready until its next good health check and the request goes to
another one, up to ``max_attempts`` servers.
"""

from __future__ import annotations

import math
import time
from typing import Any

from kubetier.lean_http import Request, Response, error_body
from kubetier.lean_http.client import UpstreamError, UpstreamResponse
from kubetier.router.context import RequestContext, ServeSettings
from kubetier.router.fleet import ClientGone, NoAlternative, QueueFull, Rejected
from kubetier.router.metrics import RouterMetrics
from kubetier.router.relay import relay_stream, relay_whole

JSON_HEADERS = [("content-type", "application/json")]


class Forwarder:
    def __init__(self, settings: ServeSettings, metrics: RouterMetrics) -> None:
        self.settings = settings
        self.metrics = metrics

    async def serve(
        self, req: Request, res: Response, body: dict[str, Any], chat: bool, stream: bool, ctx: RequestContext
    ) -> str:
        """Serve the request; returns its outcome label."""
        fleet = ctx.fleet
        m = self.metrics
        labels = (fleet.name, ctx.tier, m.worker)
        raw = req.body
        path = req.path
        attempts = 0
        max_attempts = self.settings.max_attempts
        last_error = "no server answered"
        tried: frozenset[str] = frozenset()
        while attempts < max_attempts:
            attempts += 1
            try:
                up, spilled = await fleet.acquire(
                    ctx.tier, ctx.prompt_tokens, ctx.arrival, tried, gone=lambda: res.disconnected
                )
            except Rejected as exc:
                m.rejections.labels(*labels, exc.reason).inc()
                m.tally(fleet.name, ctx.tier).rejected += 1
                retry = max(1, math.ceil(exc.retry_after_s))
                res.send(
                    429,
                    error_body(
                        429,
                        f"tier '{ctx.tier}' cannot meet its time-to-first-token target now "
                        f"({exc.reason}); retry after {retry} s",
                    ),
                    [("retry-after", str(retry))],
                )
                return "rejected"
            except QueueFull:
                m.rejections.labels(*labels, "queue-full").inc()
                m.tally(fleet.name, ctx.tier).rejected += 1
                res.send(
                    429, error_body(429, "the router's wait queue is full; retry after 1 s"), [("retry-after", "1")]
                )
                return "rejected"
            except NoAlternative:
                break
            except ClientGone:
                return "client_disconnected"
            if spilled and attempts == 1:
                m.spills.labels(*labels).inc()
                m.tally(fleet.name, ctx.tier).spilled += 1
            ctx.server = up
            ctx.prefilled = False
            ctx.prompt_tokens_on_server = ctx.prompt_tokens
            tried = tried | {up.spec.server_id}
            try:
                upr = await up.pool.request(
                    "POST", path, raw, JSON_HEADERS, header_timeout_s=self.settings.first_byte_timeout_s
                )
            except UpstreamError as exc:
                ctx.release()
                fleet.mark_unhealthy(up.spec.server_id)
                last_error = str(exc)
                self._count_retry(ctx, attempts)
                continue
            if upr.status >= 500:
                # An engine error before any token: another server may do better.
                try:
                    await upr.read_all(timeout=5.0)
                except UpstreamError:
                    pass
                upr.close()
                ctx.release()
                last_error = f"server {up.spec.server_id} answered {upr.status}"
                self._count_retry(ctx, attempts)
                continue
            if upr.status != 200 or not stream:
                return await relay_whole(res, upr, ctx, self.settings.first_byte_timeout_s)
            return await relay_stream(self, req, res, upr, body, chat, ctx)
        res.send(502, error_body(502, f"no server could serve the request after {attempts} attempts: {last_error}"))
        return "upstream_error"

    async def reopen(
        self, path: str, new_body: bytes, ctx: RequestContext, prompt_tokens: int, failed_sid: str | None
    ) -> UpstreamResponse | None:
        """A stream continuing a broken one on another server, or None."""
        fleet = ctx.fleet
        tried = frozenset({failed_sid}) if failed_sid else frozenset()
        for _ in range(self.settings.max_attempts):
            try:
                up, _spilled = await fleet.acquire(ctx.tier, prompt_tokens, time.monotonic(), tried)
            except (Rejected, QueueFull, NoAlternative):
                return None
            ctx.server = up
            ctx.prefilled = False
            ctx.prompt_tokens_on_server = prompt_tokens
            tried = tried | {up.spec.server_id}
            try:
                cand = await up.pool.request(
                    "POST", path, new_body, JSON_HEADERS, header_timeout_s=self.settings.first_byte_timeout_s
                )
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
