"""The router's status document, ``GET /kubetier/status``: per model, per tier, what the
router counted (the operator reads it for ``status.tiers[].attainmentPercent`` and the
``SLOAtRisk`` condition; the autoscaler will read the demand).

The router builds it with these models and serves :meth:`RouterStatus.wire`; the
operator parses it with :meth:`RouterStatus.model_validate`. Unknown fields are ignored
(version skew between router and operator). Attainment is defined once, in
``kubetier.policy.attainment``: a refused (429) or failed request counts as a miss.
"""

from __future__ import annotations

from typing import Final

from pydantic import Field

from kubetier.api.common import DocumentModel

STATUS_PATH: Final = "/kubetier/status"


class TierCounts(DocumentModel):
    requests: int = Field(default=0, ge=0, description="Requests received (finished, refused, failed or running).")
    completed: int = Field(default=0, ge=0, description="Requests answered in full.")
    slo_met: int = Field(default=0, ge=0, description="Completed requests whose every token met its deadline.")
    attainment_percent: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="sloMet over completed + rejected + failed (kubetier.policy.attainment); null before any.",
    )
    rejected: int = Field(default=0, ge=0, description="Requests refused with 429.")
    failed: int = Field(default=0, ge=0, description="Requests that failed (5xx, broken upstream).")
    spilled: int = Field(default=0, ge=0, description="Requests served by a tighter tier's server.")
    waiting: int = Field(default=0, description="Requests waiting for a server now.")
    inflight: int = Field(default=0, description="Requests being served now.")
    demand: int = Field(default=0, description="waiting + inflight.")
    retries: int = Field(default=0, ge=0)
    migrations: int = Field(default=0, ge=0)


class ServerState(DocumentModel):
    id: str
    tier: str = Field(description="The tier whose bin the server serves (for a pool server: its bin now).")
    endpoint: str = Field(description="host:port the router sends to.")
    ready: bool = False
    draining: bool = False
    running: int = Field(default=0, description="Sequences the router believes the server runs.")
    kv_tokens: int = Field(default=0, description="KV tokens the router believes the server holds.")
    pooled: bool = Field(default=False, description="A shared-pool server: the router moves it between tier bins.")
    power_cap_watts: float | None = Field(
        default=None, description="The power cap the server is routed under (its capped latency model); null: none."
    )
    engine_running: int | None = Field(
        default=None,
        description="Running + waiting requests the engine itself reported at the last scrape of its /metrics; "
        "null before one.",
    )
    router_running_at_scrape: int | None = Field(
        default=None,
        description="The router's own in-flight count for the server just before that scrape replaced it "
        "(compare with engineRunning: how far the router's accounting drifted in one scrape interval).",
    )


class TierDecisions(DocumentModel):
    """What the routing policy answered for one tier's requests, and how long they waited."""

    outcomes: dict[str, int] = Field(
        default_factory=dict,
        description="Routing decisions by 'action/reason' (route/own, route/spill, wait/no-feasible-server, "
        "reject/ttft-unreachable, ...), first decisions and re-decisions of waiting requests alike.",
    )
    queued: int = Field(default=0, ge=0, description="Requests that waited in the queue (left it since start).")
    queue_wait_seconds: float = Field(default=0.0, ge=0, description="Their total time in the queue.")


class ModelStatus(DocumentModel):
    tiers: dict[str, TierCounts] = Field(default_factory=dict)
    servers: list[ServerState] = Field(default_factory=list)
    queue_length: int = 0
    shared_pool: bool = Field(default=False, description="The servers are a shared pool with dynamic bins.")
    bin_moves: int = Field(
        default=0, ge=0, description="Pool servers this router worker moved from one tier's bin to another."
    )
    latency_scale: float = Field(
        default=1.0,
        description="The learned latency correction the policy admits with (observed / profile iteration time; "
        "1 = the profile), this worker's.",
    )
    latency_observations: int = Field(default=0, ge=0, description="Observations that fed the correction.")
    latency_engine_observations: int = Field(
        default=0,
        ge=0,
        description="Of them, scrape intervals timed by the engines themselves (their per-token histograms); "
        "the router's own timing of relayed streams is used only for engines that export none.",
    )
    decisions: dict[str, TierDecisions] = Field(
        default_factory=dict,
        description="Per tier: the policy's decisions by outcome and the queue waits, this worker's.",
    )
    view_checks: dict[str, int] = Field(
        default_factory=dict,
        description="How this worker's view of the engines held up, counts since start: fresh /metrics reads "
        "before a route onto a server other replicas share (fresh_reads, fresh_read_failed, route_kept, "
        "route_changed, pump_deferred) and, over the periodic scrapes (scrapes), the sequences the view had "
        "that the engine no longer ran (view_over: releases not seen) and the ones the engine ran that it "
        "lacked (view_under: admissions not seen).",
    )


class RouterStatus(DocumentModel):
    worker: str = Field(default="", description="The router worker that answered.")
    models: dict[str, ModelStatus] = Field(default_factory=dict)
