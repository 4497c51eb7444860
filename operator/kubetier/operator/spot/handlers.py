"""kopf wiring of the spot-interruption controller (thin: decisions in ``notices`` and
``kubetier.policy.spot``).

Every Node event is checked for a preemption notice. On the first sight of one, each
kubetier serving pod on the node is annotated with the deadline (the router drains it
and migrates what cannot finish), an Event goes to the pod and to its ModelService, and
the pod is deleted with a grace period ending at the deadline so that its ReplicaSet
starts the replacement at once. The notice window per source is a parameter
(``KUBETIER_NOTICE_WINDOW_*`` seconds; defaults: AWS 120, GCP 30, Azure 30, Karpenter 30).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

import httpx
import kopf
import pydantic

from kubetier.api.labels import SERVICE_LABEL, TIER_LABEL
from kubetier.api.modelservice import GROUP, PLURAL, VERSION, ModelService
from kubetier.kube import KubeError
from kubetier.kube.events import event_body
from kubetier.operator import metrics, runtime
from kubetier.operator.modelservice.handlers import controller
from kubetier.operator.modelservice.model import OperatorConfig
from kubetier.operator.spot.fallback import uses_operator_fallback
from kubetier.operator.spot.notices import (
    MANAGED_SERVING,
    grace_period_s,
    mark_patch,
    node_notice,
    pods_on,
    tier_admit_until,
)
from kubetier.operator.spot.rebalance import return_to_spot
from kubetier.policy.spot import NoticeWindows, SpotConfig

COMPONENT = "kubetier-spot"
DRAIN_MARGIN_S = 5.0


def windows_from_env(env: dict[str, str] | None = None) -> NoticeWindows:
    env = dict(os.environ if env is None else env)
    defaults = NoticeWindows()
    return NoticeWindows(
        aws=float(env.get("KUBETIER_NOTICE_WINDOW_AWS", defaults.aws)),
        gcp=float(env.get("KUBETIER_NOTICE_WINDOW_GCP", defaults.gcp)),
        azure=float(env.get("KUBETIER_NOTICE_WINDOW_AZURE", defaults.azure)),
        karpenter=float(env.get("KUBETIER_NOTICE_WINDOW_KARPENTER", defaults.karpenter)),
    )


async def on_node(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    now = time.time()
    notice = node_notice(dict(body), now, memo.setdefault("notice_windows", windows_from_env()))
    if notice is None:
        return
    api = runtime.client(memo)
    pods = pods_on(notice.node, await api.list("Pod", None, MANAGED_SERVING))
    if not pods:
        return
    stamp = dt.datetime.now(dt.UTC)
    config: OperatorConfig = memo.setdefault("config", OperatorConfig.from_env())
    services: dict[tuple[str, str], int] = {}
    specs: dict[tuple[str, str], ModelService | None] = {}
    for pod in pods:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        labels = meta.get("labels") or {}
        key = (ns, str(labels.get(SERVICE_LABEL, "")))
        if key not in specs:
            specs[key] = await _model_service(api, *key)
        found = specs[key]
        tier = next((t for t in found.spec.tiers if t.name == labels.get(TIER_LABEL)), None) if found else None
        until = tier_admit_until(notice, tier, DRAIN_MARGIN_S, float(config.pre_stop_sleep_seconds)) if tier else None
        try:
            await api.patch("Pod", ns, name, mark_patch(notice, until))
            await api.create(
                "Event",
                ns,
                event_body(
                    dict(pod),
                    "Warning",
                    "PreemptionNotice",
                    f"node {notice.node} goes in {notice.seconds_left(now):.0f}s ({notice.source}): draining; "
                    "streams that cannot finish migrate at token level; replacement starting",
                    COMPONENT,
                    stamp,
                ),
            )
            await api.delete("Pod", ns, name, grace_period_s=grace_period_s(notice, now, DRAIN_MARGIN_S))
        except KubeError as exc:
            logger.warning(f"spot: draining pod {ns}/{name} failed: {exc}")
            continue
        service = (meta.get("labels") or {}).get(SERVICE_LABEL)
        if service:
            services[(ns, service)] = services.get((ns, service), 0) + 1
    for (ns, service), count in services.items():
        ms = await api.get("ModelService", ns, service)
        if ms is None:
            continue
        await api.create(
            "Event",
            ns,
            event_body(
                ms,
                "Warning",
                "PreemptionNotice",
                f"{count} server(s) on node {notice.node} draining before {notice.source} preemption "
                f"in {notice.seconds_left(now):.0f}s; replacements starting",
                COMPONENT,
                stamp,
            ),
        )
    metrics.record_spot_notice(notice.source, len(pods))
    logger.info(f"spot: notice on {notice.node} ({notice.source}); drained {len(pods)} pod(s)")


async def _model_service(api: Any, namespace: str, name: str) -> ModelService | None:
    body = await api.get("ModelService", namespace, name) if name else None
    if not body:
        return None
    try:
        return ModelService.model_validate({k: v for k, v in body.items() if k != "status"})
    except pydantic.ValidationError:
        return None


RETURN_INTERVAL_S = 30.0
# How often a tier with capacity.fallbackAfterSeconds is re-checked: nothing changes on the
# objects when a Pending pod's wait crosses the bound, so a timer has to notice.
FALLBACK_INTERVAL_S = 5.0


def spot_config_from_env(env: dict[str, str] | None = None) -> SpotConfig:
    env = dict(os.environ if env is None else env)
    return SpotConfig(return_after_s=float(env.get("KUBETIER_SPOT_RETURN_AFTER_S", SpotConfig.return_after_s)))


async def on_return_timer(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    config: OperatorConfig = memo.setdefault("config", OperatorConfig.from_env())
    cfg: SpotConfig = memo.setdefault("spot_config", spot_config_from_env())
    try:
        moved = await return_to_spot(runtime.client(memo), dict(body), config, dt.datetime.now(dt.UTC), cfg)
    except (KubeError, ValueError) as exc:
        logger.warning(f"spot: return-to-spot check failed: {exc}")
        return
    if moved:
        metrics.SPOT_RETURNS.inc(len(moved))
        logger.info(f"spot: moving {', '.join(moved)} back to spot")


async def on_fallback_timer(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Reconcile a ModelService whose tiers use the operator's on-demand fallback, so the
    fallback starts within FALLBACK_INTERVAL_S of the bound and goes after the return period
    (the decision itself is made in the reconcile: kubetier.operator.spot.fallback)."""
    raw = dict(body)
    try:
        ms = ModelService.model_validate({k: v for k, v in raw.items() if k != "status"})
    except pydantic.ValidationError:
        return
    if not any(uses_operator_fallback(t) for t in ms.spec.tiers):
        return
    try:
        outcome = await controller(memo).reconcile(raw)
    except (KubeError, httpx.HTTPError, TimeoutError) as exc:
        logger.info(f"spot: fallback check deferred: {exc}")
        return
    for event in outcome.events:
        if event.endswith(("SpotFallback", "ReturnToSpot")):
            logger.info(f"spot: {event} for {ms.name}")


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.on.event("", "v1", "nodes", registry=registry, id="spot-notice")(on_node)
    kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        interval=RETURN_INTERVAL_S,
        initial_delay=RETURN_INTERVAL_S,
        registry=registry,
        id="spot-return",
    )(on_return_timer)
    kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        interval=FALLBACK_INTERVAL_S,
        initial_delay=FALLBACK_INTERVAL_S,
        registry=registry,
        id="spot-fallback",
    )(on_fallback_timer)
