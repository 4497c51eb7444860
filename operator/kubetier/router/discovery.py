"""Cluster discovery: the router's configuration from the objects the operator writes.

Every ``interval_s`` the router lists (``kubetier.kube``):

- ConfigMaps labelled ``kubetier.io/routing-config=true``, key ``routing.json``
  (docs/contracts.md): model name, tiers, latency profile, access entries, engine port;
- Pods labelled ``app.kubernetes.io/managed-by=kubetier`` and ``kubetier.io/role=serving``,
  matched to a service by ``kubetier.io/service`` and to a tier by ``kubetier.io/tier``.
  A pod is ready when its ``Ready`` condition is True, draining once it has a
  ``deletionTimestamp``; its endpoint is ``<pod IP>:<port>``, or with
  ``--local-endpoints`` its ``kubetier.io/local-endpoint`` annotation;
- the Secrets named by the access entries (key ``api-key``).

``build_config`` turns plain dicts of those objects into a ``RouterConfig``: pure, so
it is tested without a cluster. A ConfigMap that fails to parse is skipped with a
warning naming it; the others still route.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging

from kubetier.kube import KubeClient, KubeError
from kubetier.router.config import ConfigError, ModelSpec, RouterConfig, ServerSpec, parse_profile, parse_tier

log = logging.getLogger("kubetier.router.discovery")

ROUTING_LABEL = "kubetier.io/routing-config=true"
POD_SELECTOR = "app.kubernetes.io/managed-by=kubetier,kubetier.io/role=serving"
LOCAL_ENDPOINT = "kubetier.io/local-endpoint"


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
    configmaps: list[dict], pods: list[dict], secrets: dict[tuple[str, str], dict], local_endpoints: bool = False
) -> RouterConfig:
    """RouterConfig from ConfigMaps, Pods and Secrets given as plain (API-shaped) dicts."""
    models: dict[str, ModelSpec] = {}
    keys: dict[str, dict[str, frozenset[str]]] = {}
    by_service: dict[tuple[str, str], tuple[ModelSpec, int]] = {}
    for cm in configmaps:
        meta = _meta(cm)
        where = f"ConfigMap {meta.get('namespace')}/{meta.get('name')}"
        try:
            raw = (cm.get("data") or {}).get("routing.json")
            if raw is None:
                raise ConfigError("has no key routing.json")
            d = json.loads(raw)
            if not isinstance(d, dict):
                raise ConfigError("routing.json must be a JSON object")
            name = d.get("model")
            if not isinstance(name, str) or not name:
                raise ConfigError("routing.json: model: must be a non-empty string")
            tiers = [parse_tier(t, f"routing.json: tiers[{i}]") for i, t in enumerate(d.get("tiers") or [])]
            if not tiers:
                raise ConfigError("routing.json: tiers: needs at least one tier")
            profile = parse_profile(d.get("profile"), "routing.json: profile")
            port = d.get("port", 8000)
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"routing.json: port: must be a TCP port, got {port!r}")
            ns = d.get("namespace") or meta.get("namespace") or "default"
            service = d.get("service") or str(meta.get("name", "")).removesuffix("-routing")
        except (ConfigError, ValueError) as exc:
            log.warning("%s skipped: %s", where, exc)
            continue
        if name in models:
            log.warning("%s skipped: model %r is already served by another ModelService", where, name)
            continue
        access = d.get("access") or []
        spec = ModelSpec(name, profile, tiers, [], min(131072, profile.kv_capacity_tokens), public=not access)
        tier_names = {t.name for t in tiers}
        for entry in access:
            if not isinstance(entry, dict):
                continue
            secret = secrets.get((ns, str(entry.get("secretName"))))
            key = _secret_key(secret)
            if key is None:
                log.warning(
                    "%s: access secret %s/%s has no usable api-key; its tiers stay closed",
                    where,
                    ns,
                    entry.get("secretName"),
                )
                continue
            granted = frozenset(t for t in entry.get("tiers") or [] if t in tier_names)
            grant = keys.setdefault(key, {})
            grant[name] = grant.get(name, frozenset()) | granted
        models[name] = spec
        by_service[(ns, service)] = (spec, port)
    for pod in pods:
        meta = _meta(pod)
        labels = meta.get("labels") or {}
        found = by_service.get((str(meta.get("namespace")), str(labels.get("kubetier.io/service"))))
        if found is None:
            continue
        spec, port = found
        tier = labels.get("kubetier.io/tier")
        if tier not in {t.name for t in spec.tiers}:
            continue
        ep = pod_endpoint(pod, port, local_endpoints)
        if ep is None:
            continue
        spec.servers.append(
            ServerSpec(
                server_id=f"{meta.get('namespace')}/{meta.get('name')}",
                host=ep[0],
                port=ep[1],
                tier=tier,
                ready=pod_ready(pod),
                draining=bool(meta.get("deletionTimestamp")),
            )
        )
    for spec in models.values():
        spec.servers.sort(key=lambda s: s.server_id)
    return RouterConfig(models, keys)


def _secret_key(secret: dict | None) -> str | None:
    if not secret:
        return None
    data = secret.get("data") or {}
    if "api-key" in data:
        try:
            return base64.b64decode(data["api-key"]).decode().strip() or None
        except (ValueError, UnicodeDecodeError):
            return None
    v = (secret.get("stringData") or {}).get("api-key")
    return v.strip() if isinstance(v, str) and v.strip() else None


class ClusterSource:
    """Lists the objects through kubetier's Kubernetes layer (``kubetier.kube``)."""

    def __init__(self, namespace: str | None = None, api: KubeClient | None = None) -> None:
        self.api = api or KubeClient.connect(field_manager="kubetier-router")
        self.namespace = namespace

    async def snapshot(self) -> tuple[list[dict], list[dict], dict[tuple[str, str], dict]]:
        cms = await self.api.list("ConfigMap", self.namespace, ROUTING_LABEL)
        pods = await self.api.list("Pod", self.namespace, POD_SELECTOR)
        secrets: dict[tuple[str, str], dict] = {}
        for cm in cms:
            ns = str(_meta(cm).get("namespace") or "")
            try:
                d = json.loads((cm.get("data") or {}).get("routing.json") or "{}")
            except ValueError:
                continue
            for entry in d.get("access") or []:
                name = entry.get("secretName") if isinstance(entry, dict) else None
                if not name or (ns, name) in secrets:
                    continue
                try:
                    secret = await self.api.get("Secret", ns, name)
                except KubeError as exc:
                    log.warning("cannot read Secret %s/%s: %s", ns, name, exc)
                    continue
                if secret is None:
                    log.warning("cannot read Secret %s/%s: not found", ns, name)
                    continue
                secrets[(ns, name)] = secret
        return cms, pods, secrets


async def run_discovery(
    router,
    *,
    namespace: str | None,
    local_endpoints: bool,
    interval_s: float = 2.0,
    source: ClusterSource | None = None,
) -> None:
    src = source or ClusterSource(namespace)
    while True:
        try:
            cms, pods, secrets = await src.snapshot()
            cfg = build_config(cms, pods, secrets, local_endpoints)
            router.update_models(cfg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the API may be briefly unreachable: keep the last view
            log.warning("discovery failed, keeping the last view: %s", exc)
        await asyncio.sleep(interval_s)
