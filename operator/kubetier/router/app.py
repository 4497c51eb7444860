"""The router's HTTP front: routes, lifecycle, and per-request accounting.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus), ``GET /kubetier/status`` (per-tier demand
and attainment for the operator).

The work is split by job: ``parsing`` (request validation, prompt length), ``access``
(API keys and tier choice), ``forwarding`` (admission, retries, resumption), ``relay``
(streaming the answer back), ``resume`` (the request that continues a broken stream).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kubetier.lean_http import Request, Response, error_body
from kubetier.lean_http.errors import error_code_for
from kubetier.router.access import select_tier
from kubetier.router.config import ModelSpec, RouterConfig
from kubetier.router.context import RequestContext, ServeSettings
from kubetier.router.errors import BadRequest, ClientError
from kubetier.router.fleet import ModelFleet
from kubetier.router.forwarding import Forwarder
from kubetier.router.metrics import RouterMetrics
from kubetier.router.parsing import check_generation_fields, estimate_prompt_tokens, parse_body
from kubetier.router.resume import build_resume_body, streamed_text

# Outcomes that count as failed requests (the others: ok, rejected, client_disconnected).
FAILED_OUTCOMES = frozenset({"error", "upstream_error", "timeout", "unavailable"})

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
        max_queue: int = 10_000,
        queue_timeout_s: float = 60.0,
        resume_by_token_ids: bool = True,
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
                    raise ClientError(405, f"{path} accepts POST only", headers=[("allow", "POST")])
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
                raise ClientError(404, f"no route for {req.method} {path}")
        except ClientError as exc:
            if not res.started:
                code = exc.code or error_code_for(exc.status)
                res.send(exc.status, error_body(exc.status, exc.message, param=exc.param, code=code), exc.headers)

    def _models(self) -> dict[str, Any]:
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

    def status(self) -> dict[str, Any]:
        tallies = self.metrics.aggregated_tallies()  # every worker's, in multiprocess mode
        return {"worker": self.metrics.worker, "models": {name: f.status(tallies) for name, f in self.fleets.items()}}

    # ------------------------------------------------------------------ generation

    async def _generate(self, req: Request, res: Response, chat: bool) -> None:
        arrival = time.monotonic()
        body = parse_body(req.body)
        model = check_generation_fields(body)
        fleet = self.fleets.get(model)
        if fleet is None:
            raise ClientError(
                404,
                f"The model `{model}` does not exist (models: {', '.join(sorted(self.fleets))}).",
                "model",
                code="model_not_found",
            )
        tier_name = select_tier(req.headers, fleet, self.config.keys)
        prompt_tokens = estimate_prompt_tokens(body, chat)
        field = "messages" if chat else "prompt"
        if prompt_tokens > fleet.spec.max_prompt_tokens:
            raise ClientError(
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
        ctx = RequestContext(fleet, tier_name, tier.ttft_ms / 1000.0, tier.tpot_ms / 1000.0, arrival, prompt_tokens)
        inflight = m.inflight.labels(fleet.name, tier_name, w)
        tally.inflight += 1
        inflight.inc()
        outcome = "error"
        try:
            max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or fleet.spec.max_prompt_tokens
            outcome = await self.forwarder.serve(req, res, body, chat, stream, ctx, max_tokens)
        finally:
            ctx.release()  # no-op unless an unexpected error skipped it: keep the load honest
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
            elif outcome in FAILED_OUTCOMES:
                tally.failed += 1
