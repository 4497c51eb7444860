"""The operator's own Prometheus metrics: what each controller did, how long it took, how
it failed, and the decisions it made (replicas per tier, power levels, spot notices).

One registry per process (``REGISTRY``), served by ``serve`` on ``--metrics-port`` (the
chart binds it to ``operator.metrics.bindAddress``; tests to 127.0.0.1). Controllers call
the helpers below from their kopf handlers; nothing here decides anything.

Labels stay bounded: controller names, results and error kinds are fixed sets; namespace,
ModelService, tier and PowerBudget names are the objects the operator manages.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

from kubetier.kube import KubeError

CONTROLLERS = ("modelservice", "powerbudget", "spot")
RESULTS = ("ok", "problem", "error")  # problem: the object was not acted on (status says why)
ERROR_KINDS = ("conflict", "api", "unreachable", "timeout", "other")
POWER_LEVELS = ("normal", "capping", "braking")

REGISTRY = CollectorRegistry()
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

INFO = Info("kubetier_operator", "The running operator.", registry=REGISTRY)
RECONCILES = Counter(
    "kubetier_operator_reconciles",
    "Reconciles (or control ticks) finished, by controller and result (ok, problem: not acted on, error).",
    ["controller", "result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "kubetier_operator_reconcile_errors",
    "Reconciles that raised, by controller and kind (conflict, api, unreachable, timeout, other).",
    ["controller", "kind"],
    registry=REGISTRY,
)
# A ModelService reconcile from the watch cache with nothing to change takes milliseconds;
# one that applies children takes a few API round trips (tens to hundreds of ms).
RECONCILE_SECONDS = Histogram(
    "kubetier_operator_reconcile_duration_seconds",
    "Time one reconcile (or control tick) took, by controller.",
    ["controller"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
DESIRED_REPLICAS = Gauge(
    "kubetier_operator_desired_replicas",
    "Serving replicas the autoscaler wants per tier.",
    ["namespace", "modelservice", "tier"],
    registry=REGISTRY,
)
SCALE_DECISIONS = Counter(
    "kubetier_operator_scale_decisions",
    "Changes of a tier's desired serving replicas, by direction (up, down).",
    ["namespace", "modelservice", "tier", "direction"],
    registry=REGISTRY,
)
POWER_LEVEL = Gauge(
    "kubetier_operator_power_level",
    "1 for the PowerBudget's current level (normal, capping, braking), 0 for the others.",
    ["powerbudget", "level"],
    registry=REGISTRY,
)
POWER_DRAWN = Gauge(
    "kubetier_operator_power_drawn_watts",
    "Power the PowerBudget's domain draws (stale nodes counted at their maximum).",
    ["powerbudget"],
    registry=REGISTRY,
)
POWER_BUDGET = Gauge(
    "kubetier_operator_power_budget_watts", "The PowerBudget's budget.", ["powerbudget"], registry=REGISTRY
)
POWER_CAPPED_PODS = Gauge(
    "kubetier_operator_power_capped_pods", "Serving pods under a power cap.", ["powerbudget"], registry=REGISTRY
)
SPOT_NOTICES = Counter(
    "kubetier_operator_spot_notices",
    "Preemption notices acted on (first sight per node), by source (aws, gcp, azure, karpenter).",
    ["source"],
    registry=REGISTRY,
)
SPOT_DRAINED_PODS = Counter(
    "kubetier_operator_spot_drained_pods",
    "Serving pods drained and replaced ahead of a preemption (their streams migrate).",
    ["source"],
    registry=REGISTRY,
)
SPOT_RETURNS = Counter(
    "kubetier_operator_spot_returns",
    "Replicas that fell back to on-demand moved back to spot capacity.",
    registry=REGISTRY,
)


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, KubeError):
        return "conflict" if exc.status == 409 else "api"
    if isinstance(exc, httpx.HTTPError):
        return "unreachable"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "other"


class Reconcile:
    """The result of the reconcile being measured; set ``problem`` when it was not acted on."""

    __slots__ = ("problem",)

    def __init__(self) -> None:
        self.problem = False


@contextlib.contextmanager
def reconciling(controller: str) -> Iterator[Reconcile]:
    """Count and time one reconcile of ``controller``; an exception is counted by kind and
    re-raised. A cancelled one (operator stopping, peering pausing) is not counted."""
    started = time.perf_counter()
    rec = Reconcile()
    try:
        yield rec
    except Exception as exc:
        RECONCILE_ERRORS.labels(controller, error_kind(exc)).inc()
        RECONCILES.labels(controller, "error").inc()
        RECONCILE_SECONDS.labels(controller).observe(time.perf_counter() - started)
        raise
    RECONCILES.labels(controller, "problem" if rec.problem else "ok").inc()
    RECONCILE_SECONDS.labels(controller).observe(time.perf_counter() - started)


def record_desired(
    namespace: str, name: str, desired: Mapping[str, int], changed: Mapping[str, tuple[int, int]]
) -> None:
    """The autoscaler's desired replicas per tier after a tick, and its changes."""
    for tier, n in desired.items():
        DESIRED_REPLICAS.labels(namespace, name, tier).set(n)
    for tier, (before, after) in changed.items():
        if after != before:
            SCALE_DECISIONS.labels(namespace, name, tier, "up" if after > before else "down").inc()


def forget_modelservice(namespace: str, name: str) -> None:
    """Drop a ModelService's desired-replica series (deleted, or handled by another replica)."""
    tiers = {
        s.labels["tier"]
        for metric in DESIRED_REPLICAS.collect()
        for s in metric.samples
        if s.labels.get("namespace") == namespace and s.labels.get("modelservice") == name
    }
    for tier in tiers:
        with contextlib.suppress(KeyError):
            DESIRED_REPLICAS.remove(namespace, name, tier)


def record_power(name: str, status: Mapping[str, Any]) -> None:
    """A PowerBudget tick's status (``kubetier.operator.powerbudget.controller``)."""
    level = str(status.get("level") or "").lower()
    for known in POWER_LEVELS:
        POWER_LEVEL.labels(name, known).set(1.0 if known == level else 0.0)
    for gauge, key in ((POWER_DRAWN, "drawnWatts"), (POWER_BUDGET, "budgetWatts"), (POWER_CAPPED_PODS, "cappedPods")):
        value = status.get(key)
        if isinstance(value, int | float):
            gauge.labels(name).set(float(value))


def forget_powerbudget(name: str) -> None:
    for level in POWER_LEVELS:
        with contextlib.suppress(KeyError):
            POWER_LEVEL.remove(name, level)
    for gauge in (POWER_DRAWN, POWER_BUDGET, POWER_CAPPED_PODS):
        with contextlib.suppress(KeyError):
            gauge.remove(name)


def record_spot_notice(source: str, drained_pods: int) -> None:
    SPOT_NOTICES.labels(source).inc()
    if drained_pods:
        SPOT_DRAINED_PODS.labels(source).inc(drained_pods)


def serve(port: int, address: str) -> int:
    """Serve /metrics on address:port in a background thread; returns the bound port
    (``port`` 0 picks a free one)."""
    from kubetier import __version__

    INFO.info({"version": __version__})
    for controller in CONTROLLERS:  # every series present from the start: rate() needs a zero
        for result in RESULTS:
            RECONCILES.labels(controller, result)
    server, _thread = start_http_server(port, addr=address, registry=REGISTRY)
    bound: int = server.server_address[1]
    return bound
