"""kopf wiring of the ModelService controller: thin handlers that call ``reconcile``
(``register`` adds them to a registry; ``kubetier.operator.main`` does so).

A ModelService is reconciled when it is created, when its spec changes, when the
operator resumes, and every ``RESYNC_SECONDS`` by a timer: the timer is what notices
pods becoming ready, nodes appearing and children drifting, and since a reconcile with
nothing to change only reads, it is cheap. One lock per object keeps the timer and a
spec change from reconciling the same object at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
import kopf
import pydantic

from kubetier.api.modelservice import GROUP, PLURAL, VERSION, ModelService
from kubetier.kube import KubeError
from kubetier.operator import runtime
from kubetier.operator.modelservice import autoscaler
from kubetier.operator.modelservice.model import OperatorConfig
from kubetier.operator.modelservice.reconcile import reconcile

RESYNC_SECONDS = 10.0


def _scale(memo: kopf.Memo, key: tuple[Any, Any], body: dict[str, Any]) -> tuple[dict[str, int], dict[str, str]]:
    """The autoscaler's replica counts and reasons (status's after an operator restart)."""
    st = memo.get("autoscale", {}).get(key)
    if st is None:
        return autoscaler.desired_from_status(body), {}
    return dict(st.desired), dict(st.reasons)


async def _reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    key = (body.metadata.namespace, body.metadata.name)
    locks: dict[Any, asyncio.Lock] = memo.setdefault("locks", {})
    config: OperatorConfig = memo.setdefault("config", OperatorConfig.from_env())
    async with locks.setdefault(key, asyncio.Lock()):
        try:
            replicas, reasons = _scale(memo, key, dict(body))
            outcome = await reconcile(
                runtime.client(memo),
                dict(body),
                config,
                dt.datetime.now(dt.UTC),
                tier_replicas=replicas,
                scale_reasons=reasons,
            )
        except KubeError as exc:
            # Conflicts and transient API errors: retry with kopf's backoff, not a crash.
            raise kopf.TemporaryError(str(exc), delay=5 if exc.status == 409 else 15) from exc
        except httpx.HTTPError as exc:  # the API server is unreachable or restarting
            raise kopf.TemporaryError(f"Kubernetes API unreachable: {exc!r}", delay=15) from exc
    if outcome.applied or outcome.deleted:
        logger.info(f"applied {outcome.applied}, deleted {outcome.deleted}")
    if outcome.problem:
        logger.warning(f"{outcome.problem.reason}: {outcome.problem.message}")


async def _autoscale(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """The autoscaler's tick (kubetier.operator.modelservice.autoscaler); reconciles at
    once when a tier's desired replicas change."""
    key = (body.metadata.namespace, body.metadata.name)
    config: OperatorConfig = memo.setdefault("config", OperatorConfig.from_env())
    raw = dict(body)
    try:
        ms = ModelService.model_validate({k: v for k, v in raw.items() if k != "status"})
    except pydantic.ValidationError:
        return  # the reconcile reports an invalid spec
    api = runtime.client(memo)
    try:
        st = autoscaler.service_scaler(memo, raw, ms)
        out = await autoscaler.autoscale_once(api, raw, st, ms, config)
    except (KubeError, httpx.HTTPError) as exc:
        logger.info(f"autoscale tick skipped: {exc}")
        return
    if not out.changed:
        return
    locks: dict[Any, asyncio.Lock] = memo.setdefault("locks", {})
    async with locks.setdefault(key, asyncio.Lock()):
        try:
            await reconcile(
                api,
                raw,
                config,
                dt.datetime.now(dt.UTC),
                tier_replicas=dict(st.desired),
                scale_reasons=dict(st.reasons),
            )
        except (KubeError, httpx.HTTPError) as exc:
            logger.info(f"reconcile after scaling deferred to the resync: {exc}")


def register(registry: kopf.OperatorRegistry, resync_seconds: float = RESYNC_SECONDS) -> None:
    """Register the ModelService handlers into ``registry`` (``kubetier.operator.main``
    registers the shared runtime handlers beside them)."""
    # Distinct ids: kopf keeps each handler's progress under its id.
    kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-on-resume")(_reconcile)
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-on-create")(_reconcile)
    kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry, id="reconcile-on-update")(_reconcile)
    kopf.timer(
        GROUP, VERSION, PLURAL, interval=resync_seconds, initial_delay=resync_seconds, registry=registry, id="resync"
    )(_reconcile)
    kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        interval=autoscaler.AUTOSCALE_INTERVAL_S,
        initial_delay=autoscaler.AUTOSCALE_INTERVAL_S,
        registry=registry,
        id="autoscale",
    )(_autoscale)
