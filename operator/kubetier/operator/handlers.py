"""kopf wiring: thin handlers that call ``reconcile`` (importing this module registers them).

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
from kubetier.operator.kube import KubeApi, KubeError
from kubetier.operator.model import DOMAIN, OperatorConfig
from kubetier.operator.reconcile import reconcile

RESYNC_SECONDS = 10.0


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """kopf's own bookkeeping under kubetier.io rather than kopf.zalando.org."""
    settings.persistence.finalizer = f"{DOMAIN}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=DOMAIN)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=DOMAIN, key="last-handled-configuration"
    )
    settings.posting.level = 30  # logging.WARNING: kopf posts only warnings as Events; ours post transitions
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    # The resync timer makes kopf hold a finalizer. On deletion, a timer caught mid-run
    # is re-checked only after this many seconds (kopf's default: 60), and until then
    # `kubectl delete ms` hangs on the finalizer (seen in e2e: a 60 s delete).
    settings.background.cancellation_polling = 1


async def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_settings(settings)
    memo.setdefault("config", OperatorConfig.from_env())
    memo.setdefault("locks", {})


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then the kubeconfig (``--kubeconfig`` sets
    KUBECONFIG). The same credentials feed our KubeApi (see ``_api``)."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    memo = kwargs.get("memo")
    if info is not None and memo is not None:
        memo["connection"] = info
    return info


def _api(memo: kopf.Memo) -> KubeApi:
    if memo.get("api") is None:
        memo["api"] = KubeApi.from_connection_info(memo["connection"])
    return memo["api"]


async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("api") is not None:
        await memo["api"].aclose()


async def _reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    key = (body.metadata.namespace, body.metadata.name)
    locks: dict[Any, asyncio.Lock] = memo.setdefault("locks", {})
    async with locks.setdefault(key, asyncio.Lock()):
        try:
            outcome = await reconcile(_api(memo), dict(body), memo["config"], dt.datetime.now(dt.UTC))
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
    """Register kubetier's handlers into ``registry`` (tests use their own registry and a
    short resync)."""
    kopf.on.startup(registry=registry)(_startup)
    kopf.on.login(registry=registry)(_login)
    kopf.on.cleanup(registry=registry)(_cleanup)
    # Distinct ids: kopf keeps each handler's progress under its id.
    kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-on-resume")(_reconcile)
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-on-create")(_reconcile)
    kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry, id="reconcile-on-update")(_reconcile)
    kopf.timer(
        GROUP, VERSION, PLURAL, interval=resync_seconds, initial_delay=resync_seconds, registry=registry, id="resync"
    )(_reconcile)


register(kopf.get_default_registry())
