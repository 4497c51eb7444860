"""Cluster discovery: the router's configuration from the objects the operator writes.

The router watches (``kubetier.kube``: list once, then watch) and rebuilds its
configuration on every change:

- ConfigMaps labelled ``kubetier.io/routing-config=true``, key ``routing.json``
  (docs/contracts.md): model name, tiers, latency profile, access entries, engine port;
- Pods labelled ``app.kubernetes.io/managed-by=kubetier`` and ``kubetier.io/role=serving``,
  matched to a service by ``kubetier.io/service`` and to a tier by ``kubetier.io/tier``
  (a shared pool's pods, ``kubetier.io/pool=shared``, have no tier: the fleet bins them).
  A pod is ready when its ``Ready`` condition is True, draining once it has a
  ``deletionTimestamp``; its endpoint is ``<pod IP>:<port>``, or with
  ``--local-endpoints`` its ``kubetier.io/local-endpoint`` annotation;
- the Secrets named by the access entries (key ``api-key``);
- Nodes, for their power caps (``kubetier.io/power-cap`` and ``kubetier.io/power-report``,
  written by the PowerBudget controller and ``kubetier agent``): a serving pod on a capped
  node is routed with the capped latency model (a capped server is a slower server).
  The agent reports what NVML applied on real GPUs, so this works for any engine
  (vLLM included), not only the simulator. Without RBAC on nodes the router routes
  as if uncapped and says so once.

``build_config`` turns plain dicts of those objects into a ``RouterConfig``: pure, so
it is tested without a cluster. A ConfigMap that fails to parse is skipped with a
warning naming it; the others still route.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging

from pydantic import ValidationError

from kubetier.api.errors import describe
from kubetier.api.labels import (
    ADMIT_UNTIL_ANNOTATION,
    LOCAL_ENDPOINT_ANNOTATION,
    POOL_LABEL,
    PREEMPTION_DEADLINE_ANNOTATION,
    ROUTING_CONFIG_SELECTOR,
    SERVICE_LABEL,
    SERVING_POD_SELECTOR,
    SHARED_POOL,
    TIER_LABEL,
)
from kubetier.api.node_power import POWER_CAP_ANNOTATION, POWER_REPORT_ANNOTATION, node_cap_fraction
from kubetier.api.routing import API_KEY_SECRET_KEY, ROUTING_CONFIGMAP_SUFFIX, ROUTING_KEY, RoutingDocument
from kubetier.kube import KubeClient, KubeError
from kubetier.kube.informer import Informer, wait_synced
from kubetier.policy.bins import BinLimits
from kubetier.policy.latency import LatencyModel
from kubetier.policy.routing import TierSLO
from kubetier.router.config import ConfigError, ModelSpec, RouterConfig, ServerSpec

log = logging.getLogger("kubetier.router.discovery")

ROUTING_LABEL = ROUTING_CONFIG_SELECTOR
POD_SELECTOR = SERVING_POD_SELECTOR
LOCAL_ENDPOINT = LOCAL_ENDPOINT_ANNOTATION


def _meta(obj: dict) -> dict:
    return obj.get("metadata") or {}


def pod_endpoint(pod: dict, port: int, local_endpoints: bool) -> tuple[str, int] | None:
    if local_endpoints:
        ann = (_meta(pod).get("annotations") or {}).get(LOCAL_ENDPOINT)
        if not ann:
            return None
        host, _, p = ann.rpartition(":")
        try:
            return (host or "127.0.0.1"), int(p)
        except ValueError:
            log.warning("pod %s: annotation %s=%r is not host:port", _meta(pod).get("name"), LOCAL_ENDPOINT, ann)
            return None
    ip = (pod.get("status") or {}).get("podIP")
    return (ip, port) if ip else None


def pod_ready(pod: dict) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def build_config(
    configmaps: list[dict],
    pods: list[dict],
    secrets: dict[tuple[str, str], dict],
    local_endpoints: bool = False,
    node_caps: dict[str, float] | None = None,
) -> RouterConfig:
    """RouterConfig from ConfigMaps, Pods and Secrets given as plain (API-shaped) dicts;
    ``node_caps``: node name -> cap share (:func:`node_caps`) for the pods' nodes."""
    node_caps = node_caps or {}
    models: dict[str, ModelSpec] = {}
    keys: dict[str, dict[str, frozenset[str]]] = {}
    by_service: dict[tuple[str, str], tuple[ModelSpec, int]] = {}
    for cm in configmaps:
        meta = _meta(cm)
        where = f"ConfigMap {meta.get('namespace')}/{meta.get('name')}"
        try:
            raw = (cm.get("data") or {}).get(ROUTING_KEY)
            if raw is None:
                raise ConfigError(f"has no key {ROUTING_KEY}")
            try:
                doc = RoutingDocument.from_json(raw)
            except ValidationError as exc:
                raise ConfigError(f"{ROUTING_KEY}: " + "; ".join(describe(exc))) from None
            name = doc.model
            tiers = [TierSLO.from_api(t) for t in doc.tiers]
            profile = LatencyModel.from_api(doc.profile)
            port = doc.port
            ns = doc.namespace or meta.get("namespace") or "default"
            service = doc.service or str(meta.get("name", "")).removesuffix(ROUTING_CONFIGMAP_SUFFIX)
        except (ConfigError, ValueError) as exc:
            log.warning("%s skipped: %s", where, exc)
            continue
        if name in models:
            log.warning("%s skipped: model %r is already served by another ModelService", where, name)
            continue
        access = doc.access
        spec = ModelSpec(name, profile, tiers, [], min(131072, profile.kv_capacity_tokens), public=not access)
        if doc.shared_pool is not None:
            spec.bin_limits = {b.tier: BinLimits(b.min_servers, b.max_servers) for b in doc.shared_pool.bins}
        tier_names = {t.name for t in tiers}
        for entry in access:
            secret = secrets.get((ns, entry.secret_name))
            key = _secret_key(secret)
            if key is None:
                log.warning(
                    "%s: access secret %s/%s has no usable api-key; its tiers stay closed",
                    where,
                    ns,
                    entry.secret_name,
                )
                continue
            granted = frozenset(t for t in entry.tiers if t in tier_names)
            grant = keys.setdefault(key, {})
            grant[name] = grant.get(name, frozenset()) | granted
        models[name] = spec
        by_service[(ns, service)] = (spec, port)
    for pod in pods:
        meta = _meta(pod)
        labels = meta.get("labels") or {}
        found = by_service.get((str(meta.get("namespace")), str(labels.get(SERVICE_LABEL))))
        if found is None:
            continue
        spec, port = found
        tier = labels.get(TIER_LABEL)
        pooled = spec.bin_limits is not None and labels.get(POOL_LABEL) == SHARED_POOL
        if pooled:
            tier = ""  # the router's fleet chooses the bin (kubetier.policy.bins.join_bin)
        elif tier not in {t.name for t in spec.tiers}:
            continue
        ep = pod_endpoint(pod, port, local_endpoints)
        if ep is None:
            continue
        leave_by = preemption_deadline(meta.get("annotations") or {})
        admit_until = preemption_deadline(meta.get("annotations") or {}, ADMIT_UNTIL_ANNOTATION) if leave_by else None
        spec.servers.append(
            ServerSpec(
                server_id=f"{meta.get('namespace')}/{meta.get('name')}",
                host=ep[0],
                port=ep[1],
                tier=str(tier),
                ready=pod_ready(pod),
                draining=bool(meta.get("deletionTimestamp")) or leave_by is not None,
                leave_by=leave_by,
                pooled=pooled,
                admit_until=admit_until,
                power_cap_fraction=node_caps.get(str((pod.get("spec") or {}).get("nodeName") or "")),
            )
        )
    for spec in models.values():
        spec.servers.sort(key=lambda s: s.server_id)
    return RouterConfig(models, keys)


def node_caps(nodes: list[dict]) -> dict[str, float]:
    """Node name -> the share of its maximum draw it is capped at, for the capped nodes."""
    out = {}
    for node in nodes:
        share = node_cap_fraction(_meta(node).get("annotations") or {})
        if share is not None:
            out[str(_meta(node).get("name"))] = share
    return out


def _cap_view(node: dict | None) -> tuple[str | None, str | None]:
    ann = _meta(node or {}).get("annotations") or {}
    return ann.get(POWER_CAP_ANNOTATION), _report_caps(ann.get(POWER_REPORT_ANNOTATION))


def _report_caps(raw: str | None) -> str | None:
    # The agent rewrites its report every 0.5-1 s with a new draw; only the caps in it
    # matter here, so a change of draw alone must not rebuild the router's view.
    if not raw:
        return None
    share = node_cap_fraction({POWER_REPORT_ANNOTATION: raw})
    return None if share is None else f"{share:.4f}"


def preemption_deadline(annotations: dict, key: str = PREEMPTION_DEADLINE_ANNOTATION) -> float | None:
    """The deadline (or, with ``key``, another time) the spot controller wrote on a pod of
    a node under notice, or None."""
    text = annotations.get(key)
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        log.warning("unreadable %s %r: ignored", key, text)
        return None


def _secret_key(secret: dict | None) -> str | None:
    if not secret:
        return None
    data = secret.get("data") or {}
    if API_KEY_SECRET_KEY in data:
        try:
            return base64.b64decode(data[API_KEY_SECRET_KEY]).decode().strip() or None
        except (ValueError, UnicodeDecodeError):
            return None
    v = (secret.get("stringData") or {}).get(API_KEY_SECRET_KEY)
    return v.strip() if isinstance(v, str) and v.strip() else None


class ClusterSource:
    """The cluster as the router sees it, through kubetier's Kubernetes layer: routing
    ConfigMaps and serving pods kept current by watches (list once, then watch), the
    access Secrets read one by one."""

    def __init__(self, namespace: str | None = None, api: KubeClient | None = None, watch_nodes: bool = True) -> None:
        self.api = api or KubeClient.connect(field_manager="kubetier-router")
        self.namespace = namespace
        self.configmaps = Informer(self.api, "ConfigMap", namespace, ROUTING_LABEL)
        self.pods = Informer(self.api, "Pod", namespace, POD_SELECTOR)
        # Cluster-scoped; optional (power caps): a router without RBAC on nodes still routes.
        self.nodes: Informer | None = Informer(self.api, "Node") if watch_nodes else None
        self._secrets: dict[tuple[str, str], dict] = {}
        self._secrets_read_at = -1.0
        self._secret_names: set[tuple[str, str]] = set()

    async def snapshot(self) -> tuple[list[dict], list[dict], dict[tuple[str, str], dict]]:
        """One listing of everything (no watch): for tools and tests."""
        cms = await self.api.list("ConfigMap", self.namespace, ROUTING_LABEL)
        pods = await self.api.list("Pod", self.namespace, POD_SELECTOR)
        return cms, pods, await self._read_secrets(_secret_refs(cms))

    def node_caps(self) -> dict[str, float]:
        return node_caps(self.nodes.items()) if self.nodes is not None else {}

    async def cached(self, secret_refresh_s: float) -> tuple[list[dict], list[dict], dict[tuple[str, str], dict]]:
        """The watched ConfigMaps and pods; Secrets re-read when the set named changes or
        every ``secret_refresh_s`` (a rotated API key takes effect within that time)."""
        cms = self.configmaps.items()
        names = _secret_refs(cms)
        now = asyncio.get_running_loop().time()
        if names != self._secret_names or now - self._secrets_read_at >= secret_refresh_s:
            self._secrets = await self._read_secrets(names)
            self._secret_names, self._secrets_read_at = names, now
        return cms, self.pods.items(), self._secrets

    async def _read_secrets(self, names: set[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        secrets: dict[tuple[str, str], dict] = {}
        for ns, name in sorted(names):
            try:
                secret = await self.api.get("Secret", ns, name)
            except KubeError as exc:
                log.warning("cannot read Secret %s/%s: %s", ns, name, exc)
                continue
            if secret is None:
                log.warning("cannot read Secret %s/%s: not found", ns, name)
                continue
            secrets[(ns, name)] = secret
        return secrets


def _secret_refs(cms: list[dict]) -> set[tuple[str, str]]:
    out = set()
    for cm in cms:
        ns = str(_meta(cm).get("namespace") or "")
        try:
            doc = RoutingDocument.from_json((cm.get("data") or {}).get(ROUTING_KEY) or "{}")
        except ValueError:
            continue  # build_config logs why
        for entry in doc.access:
            out.add((ns, entry.secret_name))
    return out


async def run_discovery(
    router,
    *,
    namespace: str | None,
    local_endpoints: bool,
    interval_s: float = 2.0,
    source: ClusterSource | None = None,
    debounce_s: float = 0.05,
) -> None:
    """Keep ``router`` configured from the cluster: rebuild on every change the watches
    report (pods, routing ConfigMaps; batched over ``debounce_s``), and every
    ``interval_s`` re-read the access Secrets and rebuild (a rotated key takes effect
    within that time; Secrets are not watched: the router may only get them by name)."""
    src = source or ClusterSource(namespace)
    changed = asyncio.Event()
    for informer in (src.configmaps, src.pods):
        informer.on_change(lambda *_: changed.set())
    tasks = [asyncio.create_task(i.run(), name=repr(i)) for i in (src.configmaps, src.pods)]
    node_task = None
    if src.nodes is not None:

        def node_changed(_type: str, old: dict | None, new: dict | None) -> None:
            if _cap_view(old) != _cap_view(new):
                changed.set()

        src.nodes.on_change(node_changed)
        node_task = asyncio.create_task(src.nodes.run(), name=repr(src.nodes))
    refresh_s = interval_s
    try:
        await wait_synced([src.configmaps, src.pods])
        while True:
            changed.clear()
            try:
                cms, pods, secrets = await src.cached(refresh_s)
                router.update_models(build_config(cms, pods, secrets, local_endpoints, src.node_caps()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the last view
                log.warning("discovery failed, keeping the last view: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), refresh_s)
            await asyncio.sleep(debounce_s)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise RuntimeError(f"discovery watch stopped: {task.exception()}")
            if node_task is not None and node_task.done() and not node_task.cancelled():
                log.warning(
                    "cannot watch Nodes (%s): power caps are not seen, capped servers are routed as uncapped "
                    "(grant the router list/watch on nodes)",
                    node_task.exception(),
                )
                node_task = None
                src.nodes = None
                changed.set()
    finally:
        for task in tasks + ([node_task] if node_task is not None else []):
            task.cancel()
