"""The ModelService controller's long-lived parts: the watches (``ModelServiceWatches``),
a work queue that reconciles a ModelService when one of its children, its pods, the
nodes or its router attainment change, and the router status feed.

kopf still delivers create/update/resume and the (now long) safety resync; this adds
what kopf cannot: reacting to objects kopf does not watch. The queue coalesces: a
ModelService waiting in it is queued once however many of its pods changed, and one
lock per ModelService (shared with the kopf handlers) keeps two reconciles of the same
object from interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from kubetier.kube import KubeClient, KubeError
from kubetier.operator import metrics
from kubetier.operator.modelservice.model import OperatorConfig
from kubetier.operator.modelservice.reconcile import Outcome, reconcile
from kubetier.operator.modelservice.router_feed import RouterStatusFeed
from kubetier.operator.modelservice.watches import ModelServiceWatches

log = logging.getLogger("kubetier.operator")

Key = tuple[str, str]


class ModelServiceController:
    def __init__(
        self,
        api: KubeClient,
        config: OperatorConfig,
        namespaces: Sequence[str] | None = None,
        workers: int = 8,
        router_poll_s: float = 10.0,
        max_concurrent_reconciles: int = 16,
    ) -> None:
        self.api = api
        self.config = config
        self.watches = ModelServiceWatches(api, namespaces)
        self.feed = RouterStatusFeed(config.router_status_url, api, router_poll_s) if config.router_status_url else None
        self.workers = workers
        self.locks: dict[Key, asyncio.Lock] = {}
        # However many ModelServices kopf hands over at once (1,000 created together, or
        # all of them on resume), at most this many reconcile at a time: unbounded, they
        # queued for HTTP connections until the pool timed out (seen at 1,000 services).
        self._slots = asyncio.Semaphore(max_concurrent_reconciles)
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._started = asyncio.Event()
        self._starting = asyncio.Lock()
        self.reconciles = 0  # for tests and the benchmark
        # ModelServices kopf currently handles (its per-object daemon runs): kopf stops
        # every daemon while peering pauses this replica, so a passive replica's queue
        # reconciles nothing, however many child events its watches see.
        self.active: set[Key] = set()
        self.watches.on_service_change(self.enqueue)
        self.watches.on_nodes_change(self.enqueue_all)
        # The autoscaler's serving replicas and reasons per tier of a ModelService (set by
        # the handlers; None: replicas.min).
        self.scale_state: Callable[[Key, dict[str, Any]], tuple[dict[str, int], dict[str, str]]] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def ensure_started(self) -> None:
        if self._started.is_set():
            return
        async with self._starting:
            if self._started.is_set():
                return
            await self.watches.start()
            self._tasks = [asyncio.create_task(self._work(), name=f"ms-worker-{i}") for i in range(self.workers)]
            if self.feed is not None:
                self._tasks.append(asyncio.create_task(self.feed.run(self._attainment_changed), name="router-feed"))
            self._started.set()
            log.info("watches synced: %s", ", ".join(f"{i.kind}={len(i)}" for i in self.watches.all()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.watches.stop()
        if self.feed is not None:
            await self.feed.aclose()

    # ------------------------------------------------------------------ triggers

    def enqueue(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def enqueue_all(self) -> None:
        for key in self.watches.modelservice_keys():
            self.enqueue(*key)

    def _attainment_changed(self, models: set[str]) -> None:
        for ns, name in self.watches.modelservice_keys():
            body = self.watches.modelservice(ns, name) or {}
            if ((body.get("spec") or {}).get("model") or {}).get("name") in models:
                self.enqueue(ns, name)

    # ------------------------------------------------------------------ reconciling

    async def reconcile(self, body: dict[str, Any], now: dt.datetime | None = None) -> Outcome:
        """Reconcile one ModelService body (kopf's or the cache's) under its lock."""
        await self.ensure_started()
        meta = body["metadata"]
        key = (str(meta.get("namespace") or ""), str(meta["name"]))
        async with self.locks.setdefault(key, asyncio.Lock()), self._slots:
            # The cache may hold a newer body than kopf delivered (our own status write).
            cached = self.watches.modelservice(*key)
            if cached is not None and _newer(cached, body):
                body = cached
            self.reconciles += 1
            replicas, reasons = self.scale_state(key, body) if self.scale_state else (None, None)
            with metrics.reconciling("modelservice") as measured:
                outcome = await reconcile(
                    self.api,
                    body,
                    self.config,
                    now or dt.datetime.now(dt.UTC),
                    view=self.watches,
                    attainment=self.feed.attainment if self.feed else None,
                    migrations=self.feed.migrations if self.feed else None,
                    replicas=replicas,
                    scale_reasons=reasons,
                )
                measured.problem = outcome.problem is not None
            return outcome

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            if key not in self.active:
                continue  # kopf does not handle it here (paused by peering, or not yet seen)
            body = self.watches.modelservice(*key)
            if body is None or body["metadata"].get("deletionTimestamp"):
                continue
            try:
                await self.reconcile(body)
            except (KubeError, httpx.HTTPError) as exc:
                log.warning("reconcile of %s/%s failed (%s); the next change or resync retries", *key, exc)
            except Exception:
                log.exception("reconcile of %s/%s failed", *key)


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    va = str(a["metadata"].get("resourceVersion") or "")
    vb = str(b["metadata"].get("resourceVersion") or "")
    return va.isdigit() and vb.isdigit() and int(va) > int(vb)
