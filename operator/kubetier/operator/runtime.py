"""kopf plumbing shared by every controller: settings, login, the one ``KubeClient``
per operator process, start-up and clean-up.

Controllers (``kubetier.operator.modelservice`` now; ``powerbudget`` and the spot
handler next) register their own handlers and get the client with ``client(memo)``.
"""

from __future__ import annotations

from typing import Any

import kopf

from kubetier.kube import KubeClient
from kubetier.operator.identity import DOMAIN, FIELD_MANAGER


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


async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure_settings(settings)


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then the kubeconfig (``--kubeconfig`` sets
    KUBECONFIG). The same credentials feed our KubeClient (see ``client``)."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    memo = kwargs.get("memo")
    if info is not None and memo is not None:
        memo["connection"] = info
    return info


def client(memo: kopf.Memo) -> KubeClient:
    """The operator's one KubeClient (built on first use from kopf's login)."""
    if memo.get("api") is None:
        memo["api"] = KubeClient.from_connection(memo["connection"], FIELD_MANAGER)
    api: KubeClient = memo["api"]
    return api


async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("api") is not None:
        await memo["api"].aclose()


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.on.startup(registry=registry)(_startup)
    kopf.on.login(registry=registry)(_login)
    kopf.on.cleanup(registry=registry)(_cleanup)
