"""kopf plumbing shared by every controller: settings, login, the one ``KubeClient``
per operator process, start-up and clean-up.

Controllers (``kubetier.operator.modelservice`` now; ``powerbudget`` and the spot
handler next) register their own handlers and get the client with ``client(memo)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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


def shared(memo: kopf.Memo) -> dict[str, Any]:
    """State every handler shares. kopf gives each object a *shallow copy* of the
    operator's memo, so a key set later on one object's copy is invisible to the others;
    this dict, created at start-up, is the same object in every copy."""
    found: dict[str, Any] = memo.setdefault("shared", {})
    return found


async def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_settings(settings)
    shared(memo)


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
    state = shared(memo)
    if state.get("api") is None:
        state["api"] = KubeClient.from_connection(memo["connection"], FIELD_MANAGER)
    api: KubeClient = state["api"]
    return api


def watched_namespaces(memo: kopf.Memo) -> list[str] | None:
    """The namespaces to watch children in, or None for cluster-wide (also when a kopf
    glob pattern is among them: informers need exact namespaces)."""
    namespaces = list(memo.get("namespaces") or ())
    if not namespaces or any(ch in ns for ns in namespaces for ch in "*?[!"):
        return None
    return namespaces


def stop_on_cleanup(memo: kopf.Memo, stop: Callable[[], Awaitable[None]]) -> None:
    """Have ``stop`` awaited when the operator shuts down (before the client closes)."""
    shared(memo).setdefault("stoppers", []).append(stop)


async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    state = shared(memo)
    for stop in state.get("stoppers") or ():
        await stop()
    if state.get("api") is not None:
        await state["api"].aclose()


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.on.startup(registry=registry)(_startup)
    kopf.on.login(registry=registry)(_login)
    kopf.on.cleanup(registry=registry)(_cleanup)
