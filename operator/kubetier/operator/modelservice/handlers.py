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

from kubetier.api.modelservice import GROUP, PLURAL, VERSION
from kubetier.kube import KubeError
from kubetier.operator import runtime
from kubetier.operator.modelservice.model import OperatorConfig
from kubetier.operator.modelservice.reconcile import reconcile

RESYNC_SECONDS = 10.0


async def _reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    key = (body.metadata.namespace, body.metadata.name)
    locks: dict[Any, asyncio.Lock] = memo.setdefault("locks", {})
    config: OperatorConfig = memo.setdefault("config", OperatorConfig.from_env())
    async with locks.setdefault(key, asyncio.Lock()):
        try:
            outcome = await reconcile(runtime.client(memo), dict(body), config, dt.datetime.now(dt.UTC))
        except KubeError as exc:
            # Conflicts and transient API errors: retry with kopf's backoff, not a crash.
            raise kopf.TemporaryError(str(exc), delay=5 if exc.status == 409 else 15) from exc
        except httpx.HTTPError as exc:  # the API server is unreachable or restarting
            raise kopf.TemporaryError(f"Kubernetes API unreachable: {exc!r}", delay=15) from exc
    if outcome.applied or outcome.deleted:
        logger.info(f"applied {outcome.applied}, deleted {outcome.deleted}")
    if outcome.problem:
        logger.warning(f"{outcome.problem.reason}: {outcome.problem.message}")


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
