"""Per-tier SLO attainment as the router measured it, for ``status.tiers[].attainmentPercent``
and the ``SLOAtRisk`` condition.

The router serves ``GET /kubetier/status`` (``kubetier.api.router_status``: per model, per tier:
requests, completed, sloMet, rejected, failed, ...). ``RouterStatusFeed`` reads it from EVERY router replica on one
long-lived HTTP client every ``interval_s``, sums the counts per model, and tells the
controller which models' attainment changed (those ModelServices reconcile then, not at
their next resync). The replicas come from the EndpointSlices of the router Service
that ``KUBETIER_ROUTER_STATUS_URL`` (or ``--router-status-url``) names when it is a
``http://<service>.<namespace>.svc...`` address (the Helm chart's value); any other
address (a local router on 127.0.0.1) is read as it is. Through the Service alone the
operator would see whichever replica kube-proxy picked, a fraction of the traffic.

A router that cannot be reached leaves that model's attainment as it was last read
(unknown at first): status must never flap to "at risk" because a scrape failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import ValidationError

from kubetier.api.errors import describe
from kubetier.api.router_status import ModelStatus, RouterStatus, TierCounts
from kubetier.kube import KubeClient, KubeError
from kubetier.kube.informer import Informer
from kubetier.policy.attainment import MIN_JUDGED_REQUESTS, attainment_percent, judged_requests

log = logging.getLogger("kubetier.operator")

# Kept for callers; the threshold is defined in kubetier.policy.attainment.
MIN_REQUESTS = MIN_JUDGED_REQUESTS
# Counters summed over replicas (the router's TierTally.as_dict fields).
# TierCounts fields summed over router replicas.
_SUMMED = (
    "requests",
    "completed",
    "slo_met",
    "rejected",
    "failed",
    "spilled",
    "waiting",
    "inflight",
    "demand",
    "migrations",
)
_SERVICE_HOST = re.compile(r"^(?P<service>[a-z0-9-]+)\.(?P<namespace>[a-z0-9-]+)\.svc(\.cluster\.local)?\.?$")


def attainment_from_status(status: dict[str, Any], model: str, min_requests: int = MIN_REQUESTS) -> dict[str, float]:
    """Attainment percent per tier of ``model`` from the router's status document
    (``kubetier.api.router_status``), computed from the router's counts with
    ``kubetier.policy.attainment`` (a refused or failed request is a miss), so an older
    router that left refusals out of its own percentage is still read the same way.
    Tiers with fewer than ``min_requests`` judged requests are left out (noise)."""
    try:
        doc = RouterStatus.model_validate(status)
    except ValidationError as exc:
        log.info("router status document not understood: %s", "; ".join(describe(exc)))
        return {}
    found = doc.models.get(model)
    if found is None:
        return {}
    out = {}
    for name, counts in found.tiers.items():
        if judged_requests(counts.completed, counts.rejected, counts.failed) < min_requests:
            continue
        pct = attainment_percent(
            min(counts.slo_met, counts.completed), counts.completed, counts.rejected, counts.failed
        )
        if pct is not None:
            out[name] = round(pct, 2)
    return out


def aggregate_status(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """One status document (``kubetier.api.router_status``) from several replicas':
    counts summed per model and tier, attainment recomputed over the summed requests
    (``kubetier.policy.attainment``). A replica's document that does not parse is left
    out, with a log line naming the field."""
    summed: dict[str, dict[str, dict[str, int]]] = {}
    for raw in documents:
        try:
            doc = RouterStatus.model_validate(raw)
        except ValidationError as exc:
            log.info("router status document not understood, left out: %s", "; ".join(describe(exc)))
            continue
        for model, entry in doc.models.items():
            tiers = summed.setdefault(model, {})
            for tier, counts in entry.tiers.items():
                into = tiers.setdefault(tier, dict.fromkeys(_SUMMED, 0))
                for key in _SUMMED:
                    into[key] += getattr(counts, key)
    models = {}
    for model, tiers in summed.items():
        merged = {}
        for tier, c in tiers.items():
            pct = attainment_percent(min(c["slo_met"], c["completed"]), c["completed"], c["rejected"], c["failed"])
            merged[tier] = TierCounts(**c, attainment_percent=None if pct is None else round(pct, 2))
        models[model] = ModelStatus(tiers=merged)
    return {**RouterStatus(models=models).document(), "replicas": len(documents)}


def migrations_from_status(status: dict[str, Any], model: str) -> dict[str, int]:
    """Streams migrated mid-stream per tier of ``model`` (``status.tiers[].migrations``)."""
    try:
        doc = RouterStatus.model_validate(status)
    except ValidationError:
        return {}
    found = doc.models.get(model)
    return {name: c.migrations for name, c in found.tiers.items()} if found else {}


async def fetch_attainment(url: str, model: str, timeout_s: float = 2.0) -> dict[str, float]:
    """One read of one router (``kubetier demo`` and tests; the operator uses the feed)."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            resp = await client.get(url)
            resp.raise_for_status()
            return attainment_from_status(resp.json(), model)
    except (httpx.HTTPError, ValueError) as exc:
        log.info("router status %s unavailable: %s", url, exc)
        return {}


def router_service(url: str) -> tuple[str, str] | None:
    """(service, namespace) when ``url`` addresses a Service by its cluster DNS name."""
    host = urlsplit(url).hostname or ""
    m = _SERVICE_HOST.match(host)
    return (m["service"], m["namespace"]) if m else None


def replica_urls(url: str, slices: list[dict[str, Any]]) -> list[str]:
    """``url`` once per ready endpoint of the Service's EndpointSlices."""
    parts = urlsplit(url)
    out = []
    for eps in slices:
        ports = eps.get("ports") or []
        port = next((p.get("port") for p in ports if p.get("port") == parts.port), None)
        if port is None:
            named = [p.get("port") for p in ports if p.get("name") == "http"]
            port = named[0] if named else (ports[0].get("port") if len(ports) == 1 else None)
        if port is None:
            continue
        for endpoint in eps.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                out.append(urlunsplit((parts.scheme, f"{host}:{port}", parts.path, parts.query, "")))
    return sorted(set(out))


class RouterStatusFeed:
    def __init__(
        self, url: str, api: KubeClient | None = None, interval_s: float = 10.0, timeout_s: float = 2.0
    ) -> None:
        self.url = url
        self.interval_s = interval_s
        self._http = httpx.AsyncClient(timeout=timeout_s)  # one client for the operator's life
        self._status: dict[str, Any] = {}
        self._slices: Informer | None = None
        target = router_service(url)
        if api is not None and target is not None:
            service, namespace = target
            self._slices = Informer(api, "EndpointSlice", namespace, f"kubernetes.io/service-name={service}")
        self._slice_task: asyncio.Task[None] | None = None
        self.reads = 0  # replica reads, for tests and the benchmark

    def targets(self) -> list[str]:
        if self._slices is not None and self._slices.synced.is_set():
            found = replica_urls(self.url, self._slices.items())
            if found:
                return found
        return [self.url]

    def attainment(self, model: str) -> dict[str, float]:
        return attainment_from_status(self._status, model)

    def migrations(self, model: str) -> dict[str, int]:
        return migrations_from_status(self._status, model)

    async def poll_once(self) -> set[str]:
        """Read every replica; returns the models whose attainment changed."""
        urls = self.targets()
        results = await asyncio.gather(*(self._read(u) for u in urls))
        documents = [d for d in results if d is not None]
        if not documents:
            return set()
        merged = aggregate_status(documents)
        models = set(merged["models"]) | set(self._status.get("models") or {})
        changed = {
            m
            for m in models
            if attainment_from_status(merged, m) != self.attainment(m)
            or migrations_from_status(merged, m) != self.migrations(m)
        }
        self._status = merged
        return changed

    async def _read(self, url: str) -> dict[str, Any] | None:
        self.reads += 1
        try:
            resp = await self._http.get(url)
            resp.raise_for_status()
            doc = resp.json()
            return doc if isinstance(doc, dict) else None
        except (httpx.HTTPError, ValueError) as exc:
            log.info("router status %s unavailable: %s", url, exc)
            return None

    async def run(self, on_change: Callable[[set[str]], None]) -> None:
        if self._slices is not None:
            self._slice_task = asyncio.create_task(self._watch_slices())
        while True:
            try:
                changed = await self.poll_once()
                if changed:
                    on_change(changed)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("router status poll failed")
            await asyncio.sleep(self.interval_s)

    async def _watch_slices(self) -> None:
        assert self._slices is not None
        try:
            await self._slices.run()
        except KubeError as exc:  # e.g. no RBAC for EndpointSlices in the router's namespace
            log.warning("cannot watch the router's EndpointSlices (%s): reading %s only", exc, self.url)

    async def aclose(self) -> None:
        if self._slice_task is not None:
            self._slice_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._slice_task
        await self._http.aclose()
