"""The router's Prometheus metrics and the per-tier tallies behind its status endpoint.

Per request, never per token: TTFT and the request's mean TPOT are observed once at
the end; SLO attainment is deadline-based (token i, counted from 0, is due by
arrival + TTFT + i x TPOT) and checked once per relayed batch of events, against the
earliest token of the batch (the one with the tightest deadline).

With ``--workers K`` the workers write their samples to a shared directory
(prometheus_client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``, set up by the
parent process), so whichever worker answers ``/metrics`` or ``/kubetier/status``
reports the whole router: series carry a ``worker`` label (sum over it), and the
status endpoint sums the workers' counters and live gauges.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from kubetier.api.router_status import TierCounts
from kubetier.policy.attainment import attainment_percent

# The *_created series double the exposition for no use here.
disable_created_metrics()

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)
_TPOT_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


@dataclass
class TierTally:
    """What the status endpoint reports for one (model, tier); cheap to update."""

    requests: int = 0
    completed: int = 0
    slo_met: int = 0
    rejected: int = 0
    failed: int = 0
    spilled: int = 0
    waiting: int = 0
    inflight: int = 0
    retries: int = 0
    migrations: int = 0

    def counts(self) -> TierCounts:
        """This tally in the status document's shape (``kubetier.api.router_status``);
        attainment as ``kubetier.policy.attainment`` defines it: refused (429) and failed
        requests are misses."""
        # min(): with --workers, counters are read from several files one after another,
        # so a read may catch sloMet already incremented and completed not yet.
        met = min(self.slo_met, self.completed)
        pct = attainment_percent(met, self.completed, self.rejected, self.failed)
        return TierCounts(
            requests=self.requests,
            completed=self.completed,
            slo_met=self.slo_met,
            attainment_percent=None if pct is None else round(pct, 2),
            rejected=self.rejected,
            failed=self.failed,
            spilled=self.spilled,
            waiting=self.waiting,
            inflight=self.inflight,
            demand=self.waiting + self.inflight,
            retries=self.retries,
            migrations=self.migrations,
        )

    def as_dict(self) -> dict:
        return self.counts().document()


class TierSeries:
    """One (model, tier)'s labelled children of the per-request metrics (never removed:
    tiers keep their series for the router's life)."""

    __slots__ = ("_labels", "_requests", "_requests_by_outcome", "inflight", "slo_met", "tpot", "ttft")

    def __init__(self, m: RouterMetrics, model: str, tier: str) -> None:
        self._labels = (model, tier, m.worker)
        self._requests = m.requests
        self._requests_by_outcome: dict[str, Any] = {}
        self.inflight = m.inflight.labels(*self._labels)
        self.ttft = m.ttft.labels(*self._labels)
        self.tpot = m.tpot.labels(*self._labels)
        self.slo_met = m.slo_met.labels(*self._labels)

    def requests(self, outcome: str) -> Any:
        c = self._requests_by_outcome.get(outcome)
        if c is None:
            c = self._requests_by_outcome[outcome] = self._requests.labels(*self._labels, outcome)
        return c


class RouterMetrics:
    def __init__(self, worker: str | None = None) -> None:
        self.worker = worker if worker is not None else str(os.getpid())
        r = self.registry = CollectorRegistry(auto_describe=True)
        mt = ["model", "tier", "worker"]
        self.requests = Counter(
            "kubetier_router_requests", "Requests received, by outcome.", mt + ["outcome"], registry=r
        )
        self.slo_met = Counter(
            "kubetier_router_slo_met", "Requests whose every token met its deadline.", mt, registry=r
        )
        self.ttft = Histogram(
            "kubetier_router_ttft_seconds",
            "Time to first token seen by the router.",
            mt,
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "kubetier_router_tpot_seconds",
            "Mean time per output token of a request.",
            mt,
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.spills = Counter("kubetier_router_spills", "Requests served by a tighter tier's server.", mt, registry=r)
        self.rejections = Counter("kubetier_router_rejections", "Requests refused (429).", mt + ["reason"], registry=r)
        self.retries = Counter(
            "kubetier_router_retries", "Requests retried on another server before the first token.", mt, registry=r
        )
        self.migrations = Counter(
            "kubetier_router_migrations", "Streams resumed on another server mid-stream.", mt, registry=r
        )
        self.queue_length = Gauge(
            "kubetier_router_queue_length",
            "Requests waiting for a server.",
            mt,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "kubetier_router_queue_wait_seconds",
            "Time spent waiting for a server.",
            mt,
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "kubetier_router_inflight", "Requests being served.", mt, registry=r, multiprocess_mode="livesum"
        )
        st = ["model", "server", "tier", "worker"]
        self.server_running = Gauge(
            "kubetier_router_server_running",
            "Sequences the router believes a server runs.",
            st,
            registry=r,
            multiprocess_mode="liveall",
        )
        self.server_kv = Gauge(
            "kubetier_router_server_kv_tokens",
            "KV tokens the router believes a server holds.",
            st,
            registry=r,
            multiprocess_mode="liveall",
        )
        self.server_ready = Gauge(
            "kubetier_router_server_ready",
            "1 if the server takes new requests.",
            st,
            registry=r,
            multiprocess_mode="liveall",
        )
        self.decisions = Counter(
            "kubetier_router_decisions",
            "Routing decisions (first ones and re-decisions of waiting requests), by action and reason.",
            mt + ["action", "reason"],
            registry=r,
        )
        self.latency_scale = Gauge(
            "kubetier_router_latency_scale",
            "The learned latency correction the policy admits with (observed / profile; 1 = the profile).",
            ["model", "worker"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.server_engine_running = Gauge(
            "kubetier_router_server_engine_running",
            "Running + waiting requests the engine reported at the router's last scrape.",
            st,
            registry=r,
            multiprocess_mode="liveall",
        )
        self.tallies: dict[tuple[str, str], TierTally] = {}
        self._series: dict[tuple[str, str], TierSeries] = {}

    def series(self, model: str, tier: str) -> TierSeries:
        """The (model, tier) children of the per-request metrics, looked up once: a
        ``labels()`` call validates and joins its labels under a lock, five times per
        request before this cache (measured among the router's per-request costs)."""
        s = self._series.get((model, tier))
        if s is None:
            s = self._series[(model, tier)] = TierSeries(self, model, tier)
        return s

    def tally(self, model: str, tier: str) -> TierTally:
        t = self.tallies.get((model, tier))
        if t is None:
            t = self.tallies[(model, tier)] = TierTally()
        return t

    @staticmethod
    def multiprocess() -> bool:
        return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    def _aggregate_registry(self) -> CollectorRegistry:
        from prometheus_client import multiprocess

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return reg

    def render(self) -> bytes:
        if self.multiprocess():
            return generate_latest(self._aggregate_registry())
        return generate_latest(self.registry)

    def aggregated_tallies(self) -> dict[tuple[str, str], TierTally]:
        """Per (model, tier) tallies summed over every worker (multiprocess mode), or
        this process's own."""
        if not self.multiprocess():
            return dict(self.tallies)
        out: dict[tuple[str, str], TierTally] = {}

        def t(labels) -> TierTally:
            key = (labels["model"], labels["tier"])
            if key not in out:
                out[key] = TierTally()
            return out[key]

        for fam in self._aggregate_registry().collect():
            for smp in fam.samples:
                lb, v = smp.labels, int(smp.value)
                if "model" not in lb or "tier" not in lb:
                    continue
                n = smp.name
                if n == "kubetier_router_requests_total":
                    tl = t(lb)
                    tl.requests += v
                    o = lb.get("outcome")
                    if o == "ok":
                        tl.completed += v
                    elif o == "rejected":
                        tl.rejected += v
                    elif o in ("error", "upstream_error", "timeout", "unavailable"):
                        tl.failed += v
                elif n == "kubetier_router_slo_met_total":
                    t(lb).slo_met += v
                elif n == "kubetier_router_spills_total":
                    t(lb).spilled += v
                elif n == "kubetier_router_retries_total":
                    t(lb).retries += v
                elif n == "kubetier_router_migrations_total":
                    t(lb).migrations += v
                elif n == "kubetier_router_queue_length":
                    t(lb).waiting += v
                elif n == "kubetier_router_inflight":
                    t(lb).inflight += v
        for tl in out.values():
            tl.requests += tl.inflight  # counted at their end by the counter; still running here
        return out
