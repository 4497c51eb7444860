"""The node agent's loop: sample the GPUs, apply the cap the controller asks for, report.

Every ``sample_interval_s`` the backend is read (instantaneous power). A watch on the
agent's own Node applies a changed ``kubetier.io/power-cap`` annotation as soon as the
controller writes it (timing it: the actuation latency); every ``report_interval_s`` the
agent also reads the annotation (fallback when the watch is down) and writes
the mean power per GPU since the last report to ``kubetier.io/power-report``. Averaging
samples rather than reporting the last one keeps a single prefill spike from looking
like a sustained draw, while staying far faster than NVML's own 1 s average or
dcgm-exporter's 30 s default.

The agent never decides: when it stops, its report ages and the controller counts the
node at its maximum (fail-safe in :mod:`kubetier.policy.power`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubetier.agent.backend import BackendError, PowerBackend
from kubetier.api.node_power import (
    POWER_CAP_ANNOTATION,
    POWER_REPORT_ANNOTATION,
    GpuPower,
    NodePowerReport,
    parse_cap_annotation,
)

log = logging.getLogger("kubetier.agent")


class NodeApi(Protocol):
    """The Kubernetes calls the agent makes (``kubetier.kube`` client's signatures)."""

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...

    async def patch(self, kind: str, namespace: str | None, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class AgentConfig:
    node: str
    report_interval_s: float = 1.0
    sample_interval_s: float = 0.25

    def __post_init__(self) -> None:
        if not self.node:
            raise ValueError("the node name is required (--node or $NODE_NAME)")
        if not 0 < self.sample_interval_s <= self.report_interval_s:
            raise ValueError("need 0 < sample_interval_s <= report_interval_s")


@dataclass
class _Samples:
    sums: dict[int, float] = field(default_factory=dict)
    count: int = 0
    last: list[GpuPower] = field(default_factory=list)

    def add(self, gpus: list[GpuPower]) -> None:
        for g in gpus:
            self.sums[g.index] = self.sums.get(g.index, 0.0) + g.watts
        self.count += 1
        self.last = gpus

    def mean(self) -> list[GpuPower]:
        if not self.count:
            return []
        return [g.model_copy(update={"watts": self.sums.get(g.index, 0.0) / self.count}) for g in self.last]


class Agent:
    def __init__(
        self,
        backend: PowerBackend,
        api: NodeApi | None,
        config: AgentConfig,
        *,
        clock: Callable[[], float] = time.time,
        emit: Callable[[NodePowerReport], None] | None = None,
        apply_caps: bool = True,
    ) -> None:
        self.backend = backend
        self.api = api  # None: no apiserver (reports go to ``emit`` only)
        self.config = config
        self.clock = clock
        self.emit = emit
        self.apply_caps = apply_caps  # False: dry run (report the requested cap, never apply it)
        self.applied_cap: float | None = None
        self.requested_cap: float | None = None
        self.actuation_ms: float | None = None
        self.error: str | None = None
        self._samples = _Samples()
        self.reports = 0
        self._apply_lock = asyncio.Lock()

    async def sample(self) -> None:
        try:
            self._samples.add(await asyncio.to_thread(self.backend.read))
        except BackendError as exc:
            self.error = str(exc)
            log.warning("%s", exc)

    async def desired_cap(self) -> float | None:
        if self.api is None:
            return self.requested_cap
        node = await self.api.get("Node", None, self.config.node)
        if node is None:
            raise BackendError(f"node {self.config.node!r} not found")
        value = ((node.get("metadata") or {}).get("annotations") or {}).get(POWER_CAP_ANNOTATION)
        return parse_cap_annotation(value)

    async def apply(self, cap: float | None) -> None:
        async with self._apply_lock:
            self.requested_cap = cap
            if cap == self.applied_cap or not self.apply_caps:
                return
            t0 = time.perf_counter()
            await asyncio.to_thread(self.backend.set_cap, cap)
            self.actuation_ms = (time.perf_counter() - t0) * 1000.0
            log.info("cap %s in %.1f ms", "lifted" if cap is None else f"{cap:g} W per GPU", self.actuation_ms)
            self.applied_cap = cap

    async def watch_caps(self, stop: asyncio.Event) -> None:
        """Apply a new cap as soon as the controller writes it: a watch on this Node only
        (fieldSelector metadata.name), so the actuation latency is the watch's, not the
        report interval's. The report-time read stays as the fallback."""
        watch = getattr(self.api, "watch", None)
        if watch is None:
            return
        while not stop.is_set():
            try:
                async for ev in watch("Node", None, field_selector=f"metadata.name={self.config.node}", timeout_s=300):
                    if ev.type in ("ADDED", "MODIFIED"):
                        value = ((ev.object.get("metadata") or {}).get("annotations") or {}).get(POWER_CAP_ANNOTATION)
                        try:
                            await self.apply(parse_cap_annotation(value))
                        except (BackendError, ValueError) as exc:
                            self.error = str(exc)
                            log.warning("%s", exc)
                    if stop.is_set():
                        return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the apiserver went away or the watch expired: watch again
                log.info("node watch ended (%s); re-watching", exc)
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass

    def build_report(self) -> NodePowerReport:
        gpus = self._samples.mean()
        self._samples = _Samples()
        return NodePowerReport(
            node=self.config.node,
            backend="nvml" if self.backend.name == "nvml" else "simulated",
            observed_at=self.clock(),
            gpus=gpus,
            requested_cap_watts=self.requested_cap,
            actuation_ms=None if self.actuation_ms is None else round(self.actuation_ms, 3),
            error=self.error,
        )

    async def report_once(self) -> NodePowerReport:
        self.error = None
        try:
            await self.apply(await self.desired_cap())
        except (BackendError, ValueError) as exc:
            self.error = str(exc)
            log.warning("%s", exc)
        if not self._samples.count:
            await self.sample()
        report = self.build_report()
        if self.api is not None:
            body = json.dumps(report.wire(), separators=(",", ":"), sort_keys=True)
            await self.api.patch(
                "Node", None, self.config.node, {"metadata": {"annotations": {POWER_REPORT_ANNOTATION: body}}}
            )
        if self.emit is not None:
            self.emit(report)
        self.reports += 1
        return report

    async def run(self, stop: asyncio.Event) -> None:
        watcher = asyncio.create_task(self.watch_caps(stop)) if self.api is not None else None
        try:
            await self._sample_and_report(stop)
        finally:
            if watcher is not None:
                watcher.cancel()
                try:
                    await watcher
                except (asyncio.CancelledError, Exception):
                    pass

    async def _sample_and_report(self, stop: asyncio.Event) -> None:
        cfg = self.config
        next_report = time.monotonic()
        while not stop.is_set():
            await self.sample()
            if time.monotonic() >= next_report:
                try:
                    await self.report_once()
                except Exception as exc:  # the apiserver may be briefly away: keep sampling
                    log.warning("report failed: %s", exc)
                next_report += cfg.report_interval_s
                if next_report < time.monotonic():
                    next_report = time.monotonic() + cfg.report_interval_s
            try:
                await asyncio.wait_for(stop.wait(), cfg.sample_interval_s)
            except TimeoutError:
                pass
