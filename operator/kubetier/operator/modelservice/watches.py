"""What the ModelService controller reads, kept current by watches instead of lists.

One informer per kind and watched namespace (or one cluster-wide): ModelServices (their
bodies, for reconciles that a child change triggers), the children the operator
applies and their pods (selected by ``app.kubernetes.io/managed-by=kubetier``, indexed
by ``kubetier.io/service``), and Nodes. ``observe`` assembles an ``Observed`` from the
cache without a request. Before this, every reconcile listed the four child kinds, the
pods and all Nodes (six lists per ModelService every 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from kubetier.api.modelservice import ModelService
from kubetier.kube import KubeClient
from kubetier.kube.informer import Informer, wait_synced
from kubetier.operator.modelservice.model import MANAGED_BY, SERVICE_LABEL, Observed

log = logging.getLogger("kubetier.operator")

MANAGED_SELECTOR = f"{MANAGED_BY}=kubetier"
# The kinds desired() produces, i.e. what the operator applies and prunes.
CHILD_KINDS = ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget")
# Node fields the controller's decisions read (capacity_problem, spot placement): a node
# heartbeat that changes none of them triggers nothing.
NODE_FIELDS: tuple[tuple[str, ...], ...] = (
    ("metadata", "labels"),
    ("spec", "unschedulable"),
    ("spec", "taints"),
    ("status", "allocatable"),
)


def _at(obj: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    cur: Any = obj
    for part in path:
        cur = (cur or {}).get(part) if isinstance(cur, dict) or cur is None else None
    return cur


def node_changed(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    if old is None or new is None:
        return True
    return any(_at(old, p) != _at(new, p) for p in NODE_FIELDS)


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or ())


class ModelServiceWatches:
    def __init__(self, api: KubeClient, namespaces: Sequence[str] | None = None) -> None:
        scopes: list[str | None] = list(namespaces) if namespaces else [None]
        self.api = api
        self.modelservices = {ns: Informer(api, "ModelService", ns) for ns in scopes}
        self.children = {
            kind: {ns: Informer(api, kind, ns, MANAGED_SELECTOR, index_label=SERVICE_LABEL) for ns in scopes}
            for kind in CHILD_KINDS
        }
        self.pods = {ns: Informer(api, "Pod", ns, MANAGED_SELECTOR, index_label=SERVICE_LABEL) for ns in scopes}
        self.nodes = Informer(api, "Node")
        self._tasks: list[asyncio.Task[None]] = []

    def all(self) -> list[Informer]:
        out = [*self.modelservices.values(), *self.pods.values(), self.nodes]
        for per_ns in self.children.values():
            out += per_ns.values()
        return out

    def on_service_change(self, callback: Callable[[str, str], None]) -> None:
        """``callback(namespace, service name)`` when a child or pod of that service changes."""

        def relay(_type: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            obj = new or old or {}
            meta = obj.get("metadata") or {}
            service = (meta.get("labels") or {}).get(SERVICE_LABEL)
            if service:
                callback(str(meta.get("namespace") or ""), str(service))

        for per_ns in [*self.children.values(), self.pods]:
            for informer in per_ns.values():
                informer.on_change(relay)

    def on_nodes_change(self, callback: Callable[[], None]) -> None:
        """``callback()`` when a node appears, goes, or changes a field decisions read."""
        self.nodes.on_change(lambda _t, old, new: callback() if node_changed(old, new) else None)

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start every informer and wait until each has listed; an informer that fails
        (e.g. RBAC forbids the list: 403) fails the start with its error."""
        self._tasks = [asyncio.create_task(i.run(), name=repr(i)) for i in self.all()]
        synced = asyncio.ensure_future(wait_synced(self.all(), timeout_s))
        try:
            await asyncio.wait([synced, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
            failed = [t for t in self._tasks if t.done()]
            if failed:
                await self.stop()
                failed[0].result()  # raises the informer's error
                raise RuntimeError(f"{failed[0].get_name()} stopped")
            await synced
        except BaseException:
            synced.cancel()
            await self.stop()
            raise

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    # ------------------------------------------------------------------ reading

    def _scope(self, informers: dict[str | None, Informer], namespace: str) -> Informer | None:
        return informers.get(namespace) or informers.get(None)

    def modelservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        informer = self._scope(self.modelservices, namespace)
        return informer.get(namespace, name) if informer else None

    def modelservice_keys(self) -> list[tuple[str, str]]:
        return [
            (str(o["metadata"].get("namespace") or ""), str(o["metadata"]["name"]))
            for informer in self.modelservices.values()
            for o in informer.items()
        ]

    def remember(self, obj: dict[str, Any]) -> None:
        """Put an object we just wrote into the cache (so a reconcile that runs before
        its watch event arrives does not see the old version and write again)."""
        kind = obj.get("kind")
        ns = str(obj.get("metadata", {}).get("namespace") or "")
        per_ns = self.modelservices if kind == "ModelService" else self.children.get(str(kind))
        informer = self._scope(per_ns, ns) if per_ns else None
        if informer is not None:
            informer.remember(obj)

    def observe(self, ms: ModelService, profile_configmap: dict[str, str] | None) -> Observed:
        namespace, uid = ms.namespace, ms.metadata.get("uid", "")
        children: dict[tuple[str, str], dict[str, Any]] = {}
        for kind, per_ns in self.children.items():
            informer = self._scope(per_ns, namespace)
            for obj in informer.indexed(namespace, ms.name) if informer else ():
                if owned_by(obj, uid):
                    children[(kind, obj["metadata"]["name"])] = obj
        pod_informer = self._scope(self.pods, namespace)
        pods = pod_informer.indexed(namespace, ms.name) if pod_informer else []
        return Observed(children=children, pods=pods, nodes=self.nodes.items(), profile_configmap=profile_configmap)
