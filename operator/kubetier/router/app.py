"""The router's HTTP front: routes, lifecycle, and per-request accounting.

Routes (client port): ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``; admin routes ``GET /metrics``
(Prometheus) and ``GET /kubetier/status`` (per-tier demand and attainment for the
operator) are served on the admin port when one is configured (then not on the client
port), else on the client port, behind ``Authorization: Bearer <admin key>`` when an
admin key is set.

The work is split by job: ``front`` (request ids, CORS, checks from the head, access
logs), ``parsing`` (request validation, prompt length), ``access`` (API keys, bad-key
throttling, rate limits, tier choice), ``forwarding`` (admission, retries, resumption),
``relay`` (streaming the answer back), ``resume`` (the request that continues a broken
stream).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any

from kubetier.api.router_status import RouterStatus
from kubetier.lean_http import Request, Response, error_body
from kubetier.lean_http.errors import error_code_for
from kubetier.router.access import (
    BadKeyThrottle,
    KeyLimits,
    KeyStore,
    RateLimiter,
    authorize,
    bearer_key,
    key_digest,
    select_tier,
)
from kubetier.router.config import ModelSpec, RouterConfig
from kubetier.router.context import RequestContext, ServeSettings
from kubetier.router.errors import BadRequest, ClientError
from kubetier.router.fleet import ModelFleet
from kubetier.router.forwarding import Forwarder
from kubetier.router.front import GENERATION_PATHS, AccessRecord, Cors, HeadGate, request_id
from kubetier.router.metrics import RouterMetrics
from kubetier.router.parsing import check_generation_fields, count_prompt_tokens, estimate_prompt_tokens, parse_body
from kubetier.router.resume import build_resume_body, streamed_text
from kubetier.router.scale_from_zero import DEMAND_PATH, DemandBoard, poll_args

log = logging.getLogger("kubetier.router")

# Outcomes that count as failed requests (the others: ok, rejected, client_disconnected).
FAILED_OUTCOMES = frozenset({"error", "upstream_error", "timeout", "unavailable"})
ADMIN_PATHS = frozenset({"/metrics", "/kubetier/status", DEMAND_PATH})
HEALTH_PATHS = frozenset({"/health", "/healthz", "/readyz"})

__all__ = ["BadRequest", "Router", "build_resume_body", "estimate_prompt_tokens", "streamed_text"]


class Router:
    def __init__(
        self,
        config: RouterConfig,
        *,
        metrics: RouterMetrics | None = None,
        max_attempts: int = 3,
        max_migrations: int = 2,
        stall_timeout_s: float = 30.0,
        timeout_slack: float = 4.0,
        timeout_floor_s: float = 10.0,
        scrape_interval_s: float = 1.0,
        fresh_read_s: float | None = None,
        max_queue: int = 10_000,
        queue_timeout_s: float = 60.0,
        resume_by_token_ids: bool = True,
        key_limits: KeyLimits | None = None,
        bad_key_throttle: BadKeyThrottle | None = None,
        admin_key: str | None = None,
        admin_port_separate: bool = False,
        cors_origins: tuple[str, ...] = (),
        access_log: bool = True,
    ) -> None:
        self.config = config
        self.metrics = metrics or RouterMetrics()
        self.settings = ServeSettings(
            max_attempts=max_attempts,
            max_migrations=max_migrations,
            stall_timeout_s=stall_timeout_s,
            timeout_slack=timeout_slack,
            timeout_floor_s=timeout_floor_s,
            resume_by_token_ids=resume_by_token_ids,
        )
        self.forwarder = Forwarder(self.settings, self.metrics)
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.scrape_interval_s = scrape_interval_s
        self.fresh_read_s = fresh_read_s  # None: the fleet's default (router.fleet.FRESH_READ_S)
        self.keys = KeyStore(config.keys)
        self.limiter = RateLimiter(key_limits or KeyLimits())
        self.throttle = bad_key_throttle or BadKeyThrottle()
        self._admin_digest = key_digest(admin_key) if admin_key else None
        self.admin_port_separate = admin_port_separate
        self.cors = Cors(tuple(cors_origins))
        self.access_log = access_log
        self.head_check = HeadGate(lambda: self.keys, self._all_need_keys, self.throttle)
        self.demand = DemandBoard()  # requests held at zero; the operator long-polls it
        self.fleets: dict[str, ModelFleet] = {name: self._new_fleet(spec) for name, spec in config.models.items()}
        self.created = int(time.time())

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for f in self.fleets.values():
            f.start()

    async def stop(self) -> None:
        for f in self.fleets.values():
            await f.stop()

    def _new_fleet(self, spec: ModelSpec) -> ModelFleet:
        return ModelFleet(
            spec,
            self.metrics,
            kind=self.config.kind,
            scale_up_s=self.config.scale_up_s,
            max_queue=self.max_queue,
            scrape_interval_s=self.scrape_interval_s,
            queue_timeout_s=self.queue_timeout_s,
            demand=self.demand,
            **({} if self.fresh_read_s is None else {"fresh_read_s": self.fresh_read_s}),
        )

    def _all_need_keys(self) -> bool:
        return bool(self.fleets) and not any(f.spec.public for f in self.fleets.values())

    def update_models(self, config: RouterConfig) -> None:
        """Discovery: add, update or remove models and their servers."""
        if config.keys != self.config.keys:
            self.keys = KeyStore(config.keys)
        self.config.keys = config.keys
        for name, spec in config.models.items():
            f = self.fleets.get(name)
            if (
                f is None
                or f.spec.tiers != spec.tiers
                or f.spec.profile != spec.profile
                or f.spec.bin_limits != spec.bin_limits
            ):
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
        """The client port."""
        rid = request_id(req.headers)
        res.add_header("x-request-id", rid)
        origin = self.cors.allowed(req.headers.get("origin"))
        if origin is not None and req.method != "OPTIONS":
            for name, value in self.cors.response_headers(origin):
                res.add_header(name, value)
        path = req.path.split("?", 1)[0]
        rec = AccessRecord(rid, req.client[0] if req.client else "", req.method, path)
        ctx: RequestContext | None = None
        try:
            if path in GENERATION_PATHS:
                if req.method == "OPTIONS" and origin is not None:
                    res.send(204, b"", self.cors.preflight_headers(origin))
                    return
                if req.method != "POST":
                    raise ClientError(405, f"{path} accepts POST only", headers=[("allow", "POST")])
                ctx = await self._generate(req, res, path.endswith("chat/completions"), rec)
            elif req.method not in ("GET", "HEAD"):
                raise ClientError(404, f"no route for {req.method} {path[:128]}")
            elif path == "/v1/models":
                res.send_json(200, {"object": "list", "data": [self._model(n) for n in self.fleets]})
            elif path.startswith("/v1/models/"):
                name = path[len("/v1/models/") :]
                if name not in self.fleets:
                    raise ClientError(404, f"The model `{name[:128]}` does not exist.", "model", code="model_not_found")
                res.send_json(200, self._model(name))
            elif path in HEALTH_PATHS:
                res.send(200, b"ok", content_type="text/plain")
            elif path in ADMIN_PATHS and not self.admin_port_separate:
                self._check_admin(req)
                await self._admin(req, path, res)
            else:
                raise ClientError(404, f"no route for {req.method} {path[:128]}")
        except ClientError as exc:
            if not res.started:
                code = exc.code or error_code_for(exc.status)
                res.send(exc.status, error_body(exc.status, exc.message, param=exc.param, code=code), exc.headers)
        finally:
            if self.access_log and path not in HEALTH_PATHS:  # probes every few seconds: not worth a line
                if ctx is not None:
                    ttft = ctx.first_at - ctx.arrival if ctx.first_at else None
                    rec.emit(res.status, ctx.tokens, ttft)
                else:
                    rec.emit(res.status)

    async def handle_admin(self, req: Request, res: Response) -> None:
        """The admin port (``--admin-port``): metrics, status, health; no key."""
        path = req.path.split("?", 1)[0]
        if req.method in ("GET", "HEAD") and path in ADMIN_PATHS:
            await self._admin(req, path, res)
        elif req.method in ("GET", "HEAD") and path in ("/health", "/healthz", "/readyz"):
            res.send(200, b"ok", content_type="text/plain")
        else:
            res.send(404, error_body(404, f"no route for {req.method} {path[:128]}", code="not_found"))

    def _check_admin(self, req: Request) -> None:
        if self._admin_digest is None:
            return
        key = bearer_key(req.headers)
        if key is None or not hmac.compare_digest(key_digest(key), self._admin_digest):
            raise ClientError(401, "this endpoint needs the admin key: 'Authorization: Bearer <admin key>'")

    async def _admin(self, req: Request, path: str, res: Response) -> None:
        if path == DEMAND_PATH:
            res.send_json(200, await self.demand.wait(*poll_args(req.path)))
        elif path == "/metrics":
            res.send(200, self.metrics.render(), content_type="text/plain; version=0.0.4")
        else:
            res.send_json(200, self.status())

    def _model(self, name: str) -> dict[str, Any]:
        f = self.fleets[name]
        return {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "kubetier",
            "tiers": [t.name for t in f.spec.tiers],
        }

    def status(self) -> dict[str, Any]:
        tallies = self.metrics.aggregated_tallies()  # every worker's, in multiprocess mode
        doc = RouterStatus(
            worker=self.metrics.worker, models={name: f.model_status(tallies) for name, f in self.fleets.items()}
        )
        return doc.document()

    # ------------------------------------------------------------------ generation

    async def _generate(self, req: Request, res: Response, chat: bool, rec: AccessRecord) -> RequestContext | None:
        arrival = time.monotonic()
        body = parse_body(req.body)
        model = check_generation_fields(body)
        fleet = self.fleets.get(model)
        if fleet is None:
            raise ClientError(
                404,
                f"The model `{model[:128]}` does not exist (models: {', '.join(sorted(self.fleets))}).",
                "model",
                code="model_not_found",
            )
        rec.model = model
        allowed, key_fp = authorize(req.headers, fleet, self.keys)
        rec.key = key_fp
        tier_name = select_tier(req.headers, fleet, allowed)
        rec.tier = tier_name
        prompt_tokens = count_prompt_tokens(body, chat)
        rec.prompt_tokens = prompt_tokens
        field = "messages" if chat else "prompt"
        if prompt_tokens > fleet.spec.max_prompt_tokens:
            raise ClientError(
                400,
                f"'{field}' has {prompt_tokens} tokens, more than the {fleet.spec.max_prompt_tokens} "
                f"this model accepts",
                field,
                code="context_length_exceeded",
            )
        tier = fleet.tiers[tier_name]
        asked_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        # Rate limits per key (per address for models without keys) and tier.
        limit_key = key_fp or f"address:{rec.client}"
        for name, value in self.limiter.admit(
            limit_key, tier_name, prompt_tokens + (asked_tokens or tier.mean_output_tokens)
        ):
            res.add_header(name, value)
        m = self.metrics
        series = m.series(fleet.name, tier_name)
        tally = m.tally(fleet.name, tier_name)
        tally.requests += 1
        stream = bool(body.get("stream"))
        rec.stream = stream
        ctx = RequestContext(fleet, tier_name, tier.ttft_ms / 1000.0, tier.tpot_ms / 1000.0, arrival, prompt_tokens)
        inflight = series.inflight
        tally.inflight += 1
        inflight.inc()
        outcome = "error"
        try:
            max_tokens = asked_tokens or fleet.spec.max_prompt_tokens
            outcome = await self.forwarder.serve(req, res, body, chat, stream, ctx, max_tokens)
        finally:
            self.limiter.release(limit_key, tier_name)
            rec.outcome = outcome
            ctx.release()  # no-op unless an unexpected error skipped it: keep the load honest
            tally.inflight -= 1
            inflight.dec()
            series.requests(outcome).inc()
            if outcome == "ok":
                tally.completed += 1
                if ctx.first_at:
                    series.ttft.observe(ctx.first_at - arrival)
                if ctx.tokens > 1:
                    series.tpot.observe((ctx.last_at - ctx.first_at) / (ctx.tokens - 1))
                if not ctx.missed:
                    tally.slo_met += 1
                    series.slo_met.inc()
            elif outcome in FAILED_OUTCOMES:
                tally.failed += 1
        return ctx
