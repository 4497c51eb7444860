"""kopf wiring of the ModelService controller: thin handlers that call ``reconcile``
(``register`` adds them to a registry; ``kubetier.operator.main`` does so).

A ModelService is reconciled when it is created, when its spec changes, when the
operator resumes (kopf), when one of its children or pods, the nodes or its router
attainment change (``controller``: watches), and every ``RESYNC_SECONDS`` by a timer as a
safety net. A reconcile reads from the watch cache, so one with nothing to change makes
no API request at all. One lock per object keeps two triggers from reconciling the same
object at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any

import httpx
import kopf
import pydantic

from kubetier.api.modelservice import GROUP, PLURAL, VERSION, ModelService
from kubetier.kube import KubeError
from kubetier.operator import metrics, runtime
from kubetier.operator.modelservice import autoscale_push, autoscale_standby_spec, autoscaler
from kubetier.operator.modelservice.controller import ModelServiceController
from kubetier.operator.modelservice.model import OperatorConfig

log = logging.getLogger("kubetier.operator.autoscaler")

# A safety net only: children, pods, nodes and router attainment reach the controller
# through watches and the status feed (controller.py) as they change.
RESYNC_SECONDS = 60.0


def controller(memo: kopf.Memo) -> ModelServiceController:
    """The operator's one ModelService controller (built on first use, after login)."""
    state = runtime.shared(memo)
    if state.get("modelservice") is None:
        config: OperatorConfig = memo.get("config") or OperatorConfig.from_env()
        built = ModelServiceController(runtime.client(memo), config, runtime.watched_namespaces(memo))
        built.scale_state = lambda key, body: _scale(memo, key, body)
        state["modelservice"] = built
        runtime.stop_on_cleanup(memo, built.stop)
    found: ModelServiceController = state["modelservice"]
    return found


def _scale(memo: kopf.Memo, key: tuple[Any, Any], body: dict[str, Any]) -> tuple[dict[str, int], dict[str, str]]:
    """The autoscaler's replica counts and reasons (status's after an operator restart)."""
    st = runtime.shared(memo).get("autoscale", {}).get(tuple(key))
    if st is None:
        return autoscaler.desired_from_status(body), {}
    return dict(st.desired), dict(st.reasons)


async def _autoscale(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """The autoscaler's tick (kubetier.operator.modelservice.autoscaler); reconciles at
    once when a tier's desired replicas change."""
    _follow_router_demand(memo)
    await _autoscale_tick(memo, dict(body), logger)


async def _autoscale_tick(memo: kopf.Memo, raw: dict[str, Any], logger: Any) -> None:
    try:
        ms = ModelService.model_validate({k: v for k, v in raw.items() if k != "status"})
    except pydantic.ValidationError:
        return  # the reconcile reports an invalid spec
    ctl = controller(memo)
    try:
        await ctl.ensure_started()
        st = autoscaler.service_scaler(runtime.shared(memo), raw, ms)
        async with st.lock:
            seen = ctl.watches.observe(ms, None)
            # GPUs in use: every kubetier pod the watches cache (other workloads' pods are not
            # watched; the scheduler leaves an extra pod Pending if they hold the GPUs)
            managed = [p for informer in ctl.watches.pods.values() for p in informer.items()]
            out = await autoscaler.autoscale_once(
                ctl.api, raw, st, ms, ctl.config, urls=_router_urls(ctl), cluster=(seen.pods, managed, seen.nodes)
            )
            if out.pods_changed:
                await _cache_shows(ctl, ms, set(out.pods_changed))
    except (KubeError, httpx.HTTPError, TimeoutError) as exc:
        logger.info(f"autoscale tick skipped: {exc}")
        return
    metrics.record_desired(ms.namespace, ms.name, st.desired, out.changed)
    if not out.changed:
        return
    try:
        await ctl.reconcile(raw)
    except (KubeError, httpx.HTTPError, TimeoutError) as exc:
        logger.info(f"reconcile after scaling deferred: {exc}")


async def _cache_shows(
    ctl: ModelServiceController, ms: ModelService, changed: set[str], timeout_s: float = 3.0
) -> None:
    """Wait (bounded) until the watch cache shows the pods promoted or deleted this tick:
    the reconcile sizes the serving Deployment as desired minus promoted pods."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        pods = {f"{ms.namespace}/{p['metadata']['name']}": p for p in ctl.watches.observe(ms, None).pods}
        if all(
            sid not in pods
            or autoscale_standby_spec.is_promoted(pods[sid])
            or pods[sid]["metadata"].get("deletionTimestamp")
            for sid in changed
        ):
            return
        await asyncio.sleep(0.05)


def _follow_router_demand(memo: kopf.Memo) -> None:
    """Start (once) the long-polls of every router's demand push (autoscale_push.py)."""
    state = runtime.shared(memo)
    if state.get("autoscale_push") is not None:
        return
    ctl = controller(memo)

    async def on_demand(models: set[str]) -> None:
        for key in ctl.watches.modelservice_keys():
            body = ctl.watches.modelservice(*key)
            if key not in ctl.active or body is None:
                continue
            if ((body.get("spec") or {}).get("model") or {}).get("name") in models:
                await _autoscale_tick(memo, dict(body), log)

    follower = autoscale_push.DemandFollower(lambda: _router_urls(ctl), on_demand)
    task = asyncio.create_task(follower.run(), name="router-demand-push")
    state["autoscale_push"] = follower

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    runtime.stop_on_cleanup(memo, stop)


def _router_urls(ctl: ModelServiceController) -> list[str]:
    """Every router replica's status URL: $KUBETIER_ROUTER_STATUS_URLS, else the replicas
    the status feed found behind the router Service (EndpointSlices)."""
    urls = autoscaler.router_urls(ctl.config)
    if ctl.feed is not None and not autoscaler.explicit_router_urls():
        urls = ctl.feed.targets() or urls
    return urls


async def _reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    try:
        outcome = await controller(memo).reconcile(dict(body), dt.datetime.now(dt.UTC))
    except KubeError as exc:
        # Conflicts and transient API errors: retry with kopf's backoff, not a crash.
        raise kopf.TemporaryError(str(exc), delay=5 if exc.status == 409 else 15) from exc
    except httpx.HTTPError as exc:  # the API server is unreachable or restarting
        raise kopf.TemporaryError(f"Kubernetes API unreachable: {exc!r}", delay=15) from exc
    except TimeoutError as exc:  # the watches did not sync
        raise kopf.TemporaryError(f"watches not synced: {exc!r}", delay=15) from exc
    if outcome.applied or outcome.deleted:
        logger.info(f"applied {outcome.applied}, deleted {outcome.deleted}")
    if outcome.problem:
        logger.warning(f"{outcome.problem.reason}: {outcome.problem.message}")


async def _active(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Mark the ModelService as handled by this replica while kopf runs this daemon:
    kopf stops every daemon when peering pauses the replica (another one is active) and
    starts them again when it resumes; the controller's queue reconciles only these."""
    key = (str(body.metadata.namespace or ""), str(body.metadata.name))
    active = controller(memo).active
    active.add(key)
    try:
        await stopped.wait()
    finally:
        active.discard(key)
        metrics.forget_modelservice(*key)  # deleted, or another replica handles it now


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
    kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, id="active", cancellation_timeout=1.0)(_active)
    kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        interval=autoscaler.AUTOSCALE_INTERVAL_S,
        initial_delay=autoscaler.AUTOSCALE_INTERVAL_S,
        registry=registry,
        id="autoscale",
    )(_autoscale)
