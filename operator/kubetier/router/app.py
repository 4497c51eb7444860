"""The router's HTTP front: OpenAI-compatible routes, tier selection, the streaming relay.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus), ``GET /kubetier/status`` (per-tier demand
and attainment for the operator).

Tier selection: ``Authorization: Bearer <key>`` maps to the tiers the key may use; the
header ``X-Kubetier-Tier`` asks for one of them (default: the loosest allowed). Asking
for a tier the key does not allow is a 403 whose body says which tiers it does allow.

The relay forwards complete server-sent events as they arrive (one ``rfind`` and one
``count`` per batch of bytes, no JSON per token), straight from the upstream
connection's read callback while the request's task waits (``_EventRelay.feed`` as the
client's sink): a token costs no task wake-up, future or coroutine. Failure handling:

- before the first byte reaches the client: retry on another server (the failed one is
  marked not ready until its next good health check), up to ``max_attempts``;
- mid-stream: resume on another server with the prompt plus the text already streamed
  (completions: appended to the prompt; chat: an assistant message continued with
  ``continue_final_message``), ``max_tokens`` reduced by the tokens already sent, and
  the resumed stream's opening role chunk dropped, so the client sees one stream. If
  that is impossible the client gets an explicit ``{"error": ...}`` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

from kubetier.api.router_status import RouterStatus
from kubetier.lean_http import Request, Response, error_body
from kubetier.lean_http.client import UpstreamError, UpstreamResponse
from kubetier.router.config import RouterConfig
from kubetier.router.fleet import ClientGone, ModelFleet, NoAlternative, QueueFull, Rejected, Upstream
from kubetier.router.metrics import RouterMetrics

log = logging.getLogger("kubetier.router")

_TOKEN_MARK = b'"choices":[{'  # one per token event (the usage event has "choices":[])
_ROLE_MARK = b'"role":"assistant"'
_DONE = b"data: [DONE]"
_JSON = [("content-type", "application/json")]


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers=()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = list(headers)


def estimate_prompt_tokens(body: dict, chat: bool) -> int:
    """The prompt length the policy needs: the ``prompt_tokens`` hint when given
    (benchmarks and the engine simulator use it), else ~4 characters per token."""
    hint = body.get("prompt_tokens")
    if isinstance(hint, int) and not isinstance(hint, bool) and hint > 0:
        return hint
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest(400, "'messages' is required and must be a non-empty list", "messages")
        chars = 0
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m:
                raise BadRequest(400, f"'messages[{i}]' must be an object with a 'role'", f"messages[{i}]")
            c = m.get("content")
            if isinstance(c, str):
                chars += len(c)
            elif isinstance(c, list):
                chars += sum(len(p.get("text", "")) for p in c if isinstance(p, dict))
        return max(1, -(-chars // 4)) + 4 * len(msgs)
    if "prompt" not in body or body["prompt"] is None:
        raise BadRequest(400, "'prompt' is required", "prompt")
    p = body["prompt"]
    if isinstance(p, list) and len(p) == 1:
        p = p[0]
    if isinstance(p, str):
        return max(1, -(-len(p) // 4))
    if isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        return len(p)
    raise BadRequest(400, "'prompt' must be a string or a list of token ids", "prompt")


class Router:
    def __init__(
        self,
        config: RouterConfig,
        *,
        metrics: RouterMetrics | None = None,
        max_attempts: int = 3,
        max_migrations: int = 2,
        stall_timeout_s: float = 30.0,
        first_byte_timeout_s: float = 120.0,
        scrape_interval_s: float = 1.0,
        max_queue: int = 10_000,
    ) -> None:
        self.config = config
        self.metrics = metrics or RouterMetrics()
        self.max_attempts = max_attempts
        self.max_migrations = max_migrations
        self.stall_timeout_s = stall_timeout_s
        self.first_byte_timeout_s = first_byte_timeout_s
        self.max_queue = max_queue
        self.scrape_interval_s = scrape_interval_s
        self.fleets: dict[str, ModelFleet] = {name: self._new_fleet(spec) for name, spec in config.models.items()}
        self.created = int(time.time())

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for f in self.fleets.values():
            f.start()

    async def stop(self) -> None:
        for f in self.fleets.values():
            await f.stop()

    def _new_fleet(self, spec) -> ModelFleet:
        return ModelFleet(
            spec,
            self.metrics,
            kind=self.config.kind,
            scale_up_s=self.config.scale_up_s,
            max_queue=self.max_queue,
            scrape_interval_s=self.scrape_interval_s,
        )

    def update_models(self, config: RouterConfig) -> None:
        """Discovery: add, update or remove models and their servers."""
        self.config.keys = config.keys
        for name, spec in config.models.items():
            f = self.fleets.get(name)
            if f is None or f.spec.tiers != spec.tiers or f.spec.profile != spec.profile:
                if f is not None:
                    asyncio.ensure_future(f.stop())  # noqa: RUF006 - stop() ends on its own; nothing awaits it
                f = self.fleets[name] = self._new_fleet(spec)
                f.start()
            else:
                f.spec.public = spec.public
                f.spec.max_prompt_tokens = spec.max_prompt_tokens
                f.set_servers(spec.servers)
        for name in list(self.fleets):
            if name not in config.models:
                asyncio.ensure_future(self.fleets.pop(name).stop())  # noqa: RUF006
        self.config.models = config.models

    # ------------------------------------------------------------------ dispatch

    async def handle(self, req: Request, res: Response) -> None:
        path = req.path.split("?", 1)[0]
        try:
            if path in ("/v1/completions", "/v1/chat/completions"):
                if req.method != "POST":
                    raise BadRequest(405, f"{path} accepts POST only", headers=[("allow", "POST")])
                await self._generate(req, res, chat=path.endswith("chat/completions"))
            elif path == "/v1/models" and req.method in ("GET", "HEAD"):
                res.send_json(200, self._models())
            elif path in ("/health", "/healthz", "/readyz") and req.method in ("GET", "HEAD"):
                res.send(200, b"ok", content_type="text/plain")
            elif path == "/metrics" and req.method in ("GET", "HEAD"):
                res.send(200, self.metrics.render(), content_type="text/plain; version=0.0.4")
            elif path == "/kubetier/status" and req.method in ("GET", "HEAD"):
                res.send_json(200, self.status())
            else:
                raise BadRequest(404, f"no route for {req.method} {path}")
        except BadRequest as exc:
            if not res.started:
                res.send(exc.status, error_body(exc.status, exc.message, param=exc.param), exc.headers)

    def _models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "kubetier",
                    "tiers": [t.name for t in f.spec.tiers],
                }
                for name, f in self.fleets.items()
            ],
        }

    def status(self) -> dict:
        tallies = self.metrics.aggregated_tallies()  # every worker's, in multiprocess mode
        doc = RouterStatus(
            worker=self.metrics.worker, models={name: f.model_status(tallies) for name, f in self.fleets.items()}
        )
        return doc.wire()

    # ------------------------------------------------------------------ classification

    def _select_tier(self, req: Request, fleet: ModelFleet) -> str:
        tiers = fleet.spec.tiers
        names = {t.name for t in tiers}
        keys = self.config.keys
        if not fleet.spec.public:
            auth = req.headers.get("authorization", "")
            scheme, _, key = auth.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise BadRequest(401, "missing API key: send 'Authorization: Bearer <key>'")
            grant = keys.get(key.strip())
            if grant is None:
                raise BadRequest(401, "invalid API key")
            allowed = (grant.get(fleet.name, frozenset()) | grant.get("*", frozenset())) & names
            if not allowed:
                raise BadRequest(403, f"this API key may not use model '{fleet.name}'", "model")
        else:
            allowed = names
        asked = req.headers.get("x-kubetier-tier")
        if asked:
            asked = asked.strip()
            if asked not in names:
                raise BadRequest(
                    400,
                    f"X-Kubetier-Tier: model '{fleet.name}' has no tier '{asked}' (tiers: {', '.join(sorted(names))})",
                    "X-Kubetier-Tier",
                )
            if asked not in allowed:
                raise BadRequest(
                    403,
                    f"X-Kubetier-Tier: this API key may not use tier '{asked}' of model "
                    f"'{fleet.name}' (allowed: {', '.join(sorted(allowed))})",
                    "X-Kubetier-Tier",
                )
            return asked
        # The loosest allowed tier: the largest TPOT, then the lowest priority.
        return max((t for t in tiers if t.name in allowed), key=lambda t: (t.tpot_ms, -t.priority)).name

    def _parse(self, req: Request, chat: bool) -> tuple[dict, ModelFleet]:
        try:
            body = json.loads(req.body) if req.body else None
        except ValueError as exc:
            raise BadRequest(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest(400, "request body must be a JSON object")
        model = body.get("model")
        if model is None:
            raise BadRequest(400, "'model' is required", "model")
        if not isinstance(model, str):
            raise BadRequest(400, "'model' must be a string", "model")
        fleet = self.fleets.get(model)
        if fleet is None:
            raise BadRequest(
                404, f"The model `{model}` does not exist (models: {', '.join(sorted(self.fleets))}).", "model"
            )
        for key in ("max_tokens", "max_completion_tokens"):
            v = body.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise BadRequest(400, f"'{key}' must be an integer >= 1, got {json.dumps(v)}", key)
        if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
            raise BadRequest(400, "'stream' must be a boolean", "stream")
        return body, fleet

    # ------------------------------------------------------------------ generation

    async def _generate(self, req: Request, res: Response, chat: bool) -> None:
        arrival = time.monotonic()
        body, fleet = self._parse(req, chat)
        tier_name = self._select_tier(req, fleet)
        prompt_tokens = estimate_prompt_tokens(body, chat)
        field = "messages" if chat else "prompt"
        if prompt_tokens > fleet.spec.max_prompt_tokens:
            raise BadRequest(
                400,
                f"'{field}' has {prompt_tokens} tokens, more than the {fleet.spec.max_prompt_tokens} "
                f"this model accepts",
                field,
            )
        m = self.metrics
        w = m.worker
        tally = m.tally(fleet.name, tier_name)
        tally.requests += 1
        tier = fleet.tiers[tier_name]
        stream = bool(body.get("stream"))
        ctx = _Ctx(fleet, tier_name, tier.ttft_ms / 1000.0, tier.tpot_ms / 1000.0, arrival, prompt_tokens)
        inflight = m.inflight.labels(fleet.name, tier_name, w)
        tally.inflight += 1
        inflight.inc()
        outcome = "error"
        try:
            outcome = await self._serve(req, res, body, chat, stream, ctx)
        finally:
            self._release(ctx)  # no-op unless an unexpected error skipped it: keep the load honest
            tally.inflight -= 1
            inflight.dec()
            m.requests.labels(fleet.name, tier_name, w, outcome).inc()
            if outcome == "ok":
                tally.completed += 1
                if ctx.first_at:
                    m.ttft.labels(fleet.name, tier_name, w).observe(ctx.first_at - arrival)
                if ctx.tokens > 1:
                    m.tpot.labels(fleet.name, tier_name, w).observe((ctx.last_at - ctx.first_at) / (ctx.tokens - 1))
                if not ctx.missed:
                    tally.slo_met += 1
                    m.slo_met.labels(fleet.name, tier_name, w).inc()
            elif outcome in ("error", "upstream_error"):
                tally.failed += 1

    async def _serve(self, req: Request, res: Response, body: dict, chat: bool, stream: bool, ctx: _Ctx) -> str:
        fleet = ctx.fleet
        m = self.metrics
        labels = (fleet.name, ctx.tier, m.worker)
        raw = req.body
        path = req.path
        attempts = 0
        last_error = "no server answered"
        tried: frozenset[str] = frozenset()
        while attempts < self.max_attempts:
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
                upr = await up.pool.request("POST", path, raw, _JSON, header_timeout_s=self.first_byte_timeout_s)
            except UpstreamError as exc:
                self._release(ctx)
                fleet.mark_unhealthy(up.spec.server_id)
                last_error = str(exc)
                self._count_retry(ctx, labels, attempts)
                continue
            if upr.status >= 500:
                # An engine error before any token: another server may do better.
                try:
                    await upr.read_all(timeout=5.0)
                except UpstreamError:
                    pass
                upr.close()
                self._release(ctx)
                last_error = f"server {up.spec.server_id} answered {upr.status}"
                self._count_retry(ctx, labels, attempts)
                continue
            if upr.status != 200 or not stream:
                return await self._relay_whole(res, upr, ctx)
            return await self._relay_stream(req, res, upr, body, chat, ctx)
        res.send(502, error_body(502, f"no server could serve the request after {attempts} attempts: {last_error}"))
        return "upstream_error"

    def _count_retry(self, ctx: _Ctx, labels: tuple, attempts: int) -> None:
        if attempts < self.max_attempts:
            self.metrics.retries.labels(*labels).inc()
            self.metrics.tally(ctx.fleet.name, ctx.tier).retries += 1

    def _release(self, ctx: _Ctx) -> None:
        if ctx.server is not None:
            ctx.fleet.release(
                ctx.server.spec.server_id, ctx.prompt_tokens_on_server, ctx.tokens_on_server, ctx.prefilled
            )
            ctx.server = None
            ctx.tokens_on_server = 0

    async def _relay_whole(self, res: Response, upr: UpstreamResponse, ctx: _Ctx) -> str:
        try:
            data = await upr.read_all(timeout=self.first_byte_timeout_s)
        except UpstreamError as exc:
            upr.close()
            self._release(ctx)
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
        self._release(ctx)
        ctype = upr.headers.get("content-type", "application/json")
        res.send(upr.status, data, content_type=ctype)
        return "ok" if ok else f"upstream_{upr.status}"

    async def _relay_stream(
        self, req: Request, res: Response, upr: UpstreamResponse, body: dict, chat: bool, ctx: _Ctx
    ) -> str:
        fleet = ctx.fleet
        m = self.metrics
        labels = (fleet.name, ctx.tier, m.worker)
        res.start_stream(200, [("x-kubetier-tier", ctx.tier)])
        sent: list[bytes] = []  # complete events relayed: the text to resume from
        migrations = 0
        drop_role = False
        while True:
            # A client that goes away cuts the upstream at once: the engine frees the slot.
            res.add_disconnect_callback(upr.close)
            failure = await self._pump_events(res, upr, ctx, sent, drop_role)
            upr.close()
            if failure is None:
                self._release(ctx)
                res.end()
                return "ok"
            if failure == "client-gone" or res.disconnected:
                self._release(ctx)
                return "client_disconnected"
            # Mid-stream failure: resume elsewhere with what the client already has.
            failed_sid = ctx.server.spec.server_id if ctx.server else None
            self._release(ctx)
            if failed_sid:
                fleet.mark_unhealthy(failed_sid)
            migrations += 1
            if migrations > self.max_migrations:
                return self._stream_error(
                    res, f"stream failed ({failure}) and {self.max_migrations} resumptions were used up"
                )
            resume = build_resume_body(body, chat, sent)
            if resume is None:
                return self._stream_error(res, f"stream failed ({failure}) and cannot be resumed (token-id prompt)")
            new_body, done_tokens = resume
            if new_body is None:  # every requested token was already sent
                res.write(b"data: [DONE]\n\n")
                res.end()
                return "ok"
            m.migrations.labels(*labels).inc()
            m.tally(fleet.name, ctx.tier).migrations += 1
            upr = None
            prompt = ctx.prompt_tokens + done_tokens
            tried = frozenset({failed_sid}) if failed_sid else frozenset()
            for _ in range(self.max_attempts):
                try:
                    up, _spilled = await fleet.acquire(ctx.tier, prompt, time.monotonic(), tried)
                except (Rejected, QueueFull, NoAlternative):
                    break
                ctx.server = up
                ctx.prefilled = False
                ctx.prompt_tokens_on_server = prompt
                tried = tried | {up.spec.server_id}
                try:
                    cand = await up.pool.request(
                        "POST", req.path, new_body, _JSON, header_timeout_s=self.first_byte_timeout_s
                    )
                except UpstreamError:
                    self._release(ctx)
                    fleet.mark_unhealthy(up.spec.server_id)
                    continue
                if cand.status != 200:
                    cand.close()
                    self._release(ctx)
                    continue
                upr = cand
                break
            if upr is None:
                return self._stream_error(res, f"stream failed ({failure}) and no server could resume it")
            drop_role = chat

    async def _pump_events(
        self, res: Response, upr: UpstreamResponse, ctx: _Ctx, sent: list[bytes], drop_role: bool
    ) -> str | None:
        """Relay complete events until the upstream ends. None = finished normally.

        While this task waits, the upstream connection hands each read straight to
        ``relay.feed`` (``set_sink``): no task wake-up per event. The task wakes at the
        end, on failure or stall, and when the client is slow (to drain) or gone."""
        relay = _EventRelay(res, ctx, sent, drop_role)
        stall = self.stall_timeout_s
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

    def _stream_error(self, res: Response, message: str) -> str:
        log.warning("stream error: %s", message)
        ev = json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": 502}})
        res.write(b"data: " + ev.encode() + b"\n\n")
        res.end()
        return "upstream_error"


class _EventRelay:
    """One upstream stream's relay state: complete events out, SLO accounting per batch
    (one ``rfind`` and one ``count`` per read, no JSON per token)."""

    __slots__ = ("ctx", "done", "drop_role", "res", "sent", "tail")

    def __init__(self, res: Response, ctx: _Ctx, sent: list[bytes], drop_role: bool) -> None:
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
        if self.drop_role and _ROLE_MARK in out:
            out = b"".join(e + b"\n\n" for e in out.split(b"\n\n") if e and _ROLE_MARK not in e)
            self.drop_role = False
            if not out:
                return True
        n = out.count(_TOKEN_MARK)
        if n:
            ctx = self.ctx
            now = time.monotonic()
            if ctx.tokens == 0 and _ROLE_MARK in out:
                n -= 1  # the chat stream's opening role chunk carries no token
            if n > 0:
                if ctx.first_at == 0.0:
                    ctx.first_at = now
                if not ctx.prefilled:
                    ctx.prefilled = True
                    ctx.fleet.prefill_done(ctx.server.spec.server_id, ctx.prompt_tokens_on_server)
                # Deadline of the batch's earliest token (index ctx.tokens, from 0).
                if now > ctx.arrival + ctx.ttft_s + ctx.tokens * ctx.tpot_s:
                    ctx.missed = True
                ctx.tokens += n
                ctx.tokens_on_server += n
                ctx.last_at = now
        if not self.done and _DONE in out:
            self.done = True
        res = self.res
        res.write(out)
        self.sent.append(out)
        return not (res.writing_paused or res.disconnected)


class _Ctx:
    __slots__ = (
        "arrival",
        "first_at",
        "fleet",
        "last_at",
        "missed",
        "prefilled",
        "prompt_tokens",
        "prompt_tokens_on_server",
        "server",
        "tier",
        "tokens",
        "tokens_on_server",
        "tpot_s",
        "ttft_s",
    )

    def __init__(
        self, fleet: ModelFleet, tier: str, ttft_s: float, tpot_s: float, arrival: float, prompt_tokens: int
    ) -> None:
        self.fleet = fleet
        self.tier = tier
        self.ttft_s = ttft_s
        self.tpot_s = tpot_s
        self.arrival = arrival
        self.prompt_tokens = prompt_tokens
        self.prompt_tokens_on_server = 0
        self.server: Upstream | None = None
        self.prefilled = False
        self.tokens = 0
        self.tokens_on_server = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.missed = False


def streamed_text(sent: list[bytes]) -> tuple[str, int]:
    """The text and token count of the events already relayed (parsed only on failure)."""
    parts: list[str] = []
    n = 0
    for chunk in sent:
        for line in chunk.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            try:
                ev = json.loads(line[6:])
            except ValueError:
                continue
            choices = ev.get("choices") or []
            if not choices:
                continue
            c = choices[0]
            if "text" in c:
                piece = c.get("text")
            else:
                delta = c.get("delta") or {}
                if "content" not in delta or (delta.get("role") and not delta.get("content")):
                    continue
                piece = delta.get("content")
            if piece is None:
                continue
            parts.append(piece)
            n += 1
    return "".join(parts), n


def build_resume_body(body: dict, chat: bool, sent: list[bytes]) -> tuple[bytes | None, int] | None:
    """The request that continues a broken stream, and the tokens already sent.
    (None, n) when nothing is left to generate; None when it cannot be resumed."""
    text, n = streamed_text(sent)
    new: dict[str, Any] = dict(body)
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(new.get(key), int):
            left = new[key] - n
            if left < 1:
                return None, n
            new[key] = left
    if isinstance(new.get("prompt_tokens"), int):
        new["prompt_tokens"] = new["prompt_tokens"] + n
    if chat:
        msgs = list(new.get("messages") or [])
        msgs.append({"role": "assistant", "content": text})
        new["messages"] = msgs
        new["continue_final_message"] = True
        new["add_generation_prompt"] = False
    else:
        p = new.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if not isinstance(p, str):
            return None
        new["prompt"] = p + text
    return json.dumps(new, separators=(",", ":")).encode(), n
