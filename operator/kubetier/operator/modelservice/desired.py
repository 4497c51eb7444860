"""``desired(ms, observed)``: every object a ModelService should own (pure, no I/O).

Per tier:

* serving **Deployments**. A Deployment rather than bare pods: the ReplicaSet
  controller replaces preempted spot pods and evicted pods without the operator in the
  loop, rolling updates with surge keep a tier's capacity during an image or argument
  change, and the autoscaler only has to move ``spec.replicas``. Picking *which* pod
  goes on scale-in (the least loaded, PolyServe's gradient) stays possible through the
  ``controller.kubernetes.io/pod-deletion-cost`` annotation, which ReplicaSets honour.
  A tier whose spot policy is ``allowed``/``preferred`` and that has an
  ``onDemandFloor`` gets two: ``<ms>-<tier>-floor`` (on-demand required, ``floor``
  replicas) and ``<ms>-<tier>`` (the rest, spot-eligible). One Deployment cannot
  express "N of these pods on on-demand, the rest anywhere": node affinity applies to
  every pod of a template alike.
* a **standby** Deployment ``<ms>-<tier>-standby`` (role ``standby``) when
  ``prewarm.standby > 0``: warm replicas with the model loaded that the router does not
  route to.
* a headless **Service** ``<ms>-<tier>`` over the serving pods: the router balances by
  its own SLO policy over pod addresses, so kube-proxy's load balancing would only get
  in the way; the Service gives EndpointSlices and DNS per tier.
* a **PodDisruptionBudget** ``<ms>-<tier>``: voluntary disruptions (drains, Karpenter
  consolidation) take at most one serving pod of a tier at a time.

Per service: the routing ConfigMap ``<ms>-routing`` (docs/contracts.md).

With ``spec.sharedPool`` the tiers share one pool instead: one Deployment, Service and
PodDisruptionBudget ``<ms>-pool`` whose pods carry ``kubetier.io/pool: shared`` and no
tier label, and a routing document whose ``sharedPool`` lists each tier's bin limits
(``tiers[].replicas.min/max``); the router assigns the pool's servers to tier bins and
moves idle ones as load shifts (kubetier.policy.bins).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubetier.api.labels import MANAGED_BY_VALUE, SHARED_POOL
from kubetier.api.modelservice import GROUP, KIND, VERSION, ModelService, ModelServiceSpec, Tier
from kubetier.api.profile import LatencyProfile
from kubetier.api.routing import ROUTING_KEY as ROUTING_KEY
from kubetier.api.routing import AccessEntry, PoolBin, RoutingDocument, RoutingPool, RoutingTier
from kubetier.api.routing import routing_configmap_name as _routing_configmap_name
from kubetier.operator.modelservice import engines
from kubetier.operator.modelservice.autoscale_standby_spec import (
    promoted_serving,
    standby_engine_args,
    standby_engine_env,
)
from kubetier.operator.modelservice.model import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    MANAGED_BY,
    POOL_LABEL,
    ROLE_LABEL,
    ROUTING_CONFIG_LABEL,
    SERVICE_LABEL,
    TIER_LABEL,
    Observed,
    OperatorConfig,
    tier_sizing,
)
from kubetier.operator.modelservice.profile import resolve_profile
from kubetier.policy import sizing
from kubetier.policy.spot import CapacityScheme


def desired(
    ms: ModelService,
    observed: Observed,
    config: OperatorConfig | None = None,
    replicas: Mapping[str, int] | None = None,
    fallback: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """All children of ``ms``; raises ``Unsatisfiable`` when the profile cannot be resolved.

    ``replicas``: serving replicas per tier as decided (by the autoscaler); a tier that
    is absent runs ``replicas.min``. ``fallback``: on-demand fallback replicas per tier
    (kubetier.operator.spot.fallback; absent: none)."""
    config = config or OperatorConfig()
    # The engine's batching flags and the router's prediction come from this one profile.
    profile = engines.batching_profile(ms.spec, resolve_profile(ms.spec, observed.profile_configmap))
    objects: list[dict[str, Any]] = [routing_configmap(ms, profile)]
    if ms.spec.shared_pool is not None:
        return objects + pool_objects(ms, pool_replicas(ms.spec, replicas), config, profile)
    for tier in ms.spec.tiers:
        promoted = promoted_serving(observed.pods, tier.name)
        objects += tier_deployments(
            ms, tier, serving_replicas(tier, replicas), config, profile, promoted, (fallback or {}).get(tier.name, 0)
        )
        objects.append(tier_service(ms, tier))
        objects.append(tier_pdb(ms, tier))
    return objects


# --------------------------------------------------------------------------- sizing


def serving_replicas(tier: Tier, replicas: Mapping[str, int] | None = None) -> int:
    """Serving replicas of ``tier``: ``replicas`` (chosen by the autoscaler) clamped to
    [min, max], else min (kubetier.policy.sizing)."""
    return sizing.serving_replicas(tier_sizing(tier), replicas)


def pools(tier: Tier, total: int, fallback: int = 0) -> list[sizing.Pool]:
    return sizing.pools(tier_sizing(tier, fallback), total)


# --------------------------------------------------------------------------- naming and metadata


def tier_object_name(ms: ModelService, tier: Tier, pool: str = "main") -> str:
    base = f"{ms.name}-{tier.name}"
    return base if pool == "main" else f"{base}-{pool}"


def routing_configmap_name(ms: ModelService) -> str:
    return _routing_configmap_name(ms.name)


def owner_reference(ms: ModelService) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": ms.name,
        "uid": ms.metadata.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(ms: ModelService, tier: Tier | None = None, role: str | None = None) -> dict[str, str]:
    out = {MANAGED_BY: MANAGED_BY_VALUE, SERVICE_LABEL: ms.name}
    if tier is not None:
        out[TIER_LABEL] = tier.name
    if role is not None:
        out[ROLE_LABEL] = role
    return out


def _metadata(ms: ModelService, name: str, object_labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ms.namespace,
        "labels": object_labels,
        "ownerReferences": [owner_reference(ms)],
    }


# --------------------------------------------------------------------------- routing config


def routing_document(ms: ModelService, profile: dict[str, Any]) -> RoutingDocument:
    """The routing document (``kubetier.api.routing``) for ``ms`` with its resolved profile."""
    spec = ms.spec
    return RoutingDocument(
        model=spec.model.name,
        namespace=ms.namespace,
        service=ms.name,
        tiers=[RoutingTier.model_validate(t.as_slo_tier().model_dump()) for t in spec.tiers],
        profile=LatencyProfile.model_validate(profile),
        access=[AccessEntry(secret_name=a.secret_ref.name, tiers=list(a.tiers)) for a in spec.access],
        port=spec.engine.port,
        shared_pool=routing_pool(spec),
    )


def routing_pool(spec: ModelServiceSpec) -> RoutingPool | None:
    """Each tier's bin limits in the shared pool: its replicas.min and replicas.max."""
    if spec.shared_pool is None:
        return None
    return RoutingPool(
        bins=[PoolBin(tier=t.name, min_servers=t.replicas.min, max_servers=t.replicas.max) for t in spec.tiers]
    )


def routing_configmap(ms: ModelService, profile: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(ms, routing_configmap_name(ms), {**labels(ms), ROUTING_CONFIG_LABEL: "true"}),
        "data": {
            ROUTING_KEY: routing_document(ms, profile).to_json(),
            # The simulator engine reads its profile from here (JSON is valid YAML).
            engines.PROFILE_FILE: json.dumps(profile, sort_keys=True, indent=2),
        },
    }


# --------------------------------------------------------------------------- workloads


def node_affinity(spec: ModelServiceSpec, placement: str, scheme: CapacityScheme) -> dict[str, Any]:
    """Placement by capacity type in the platform's own labels (``scheme``). On-demand is
    "not a spot value", which also matches nodes with no capacity label at all, so a
    cluster without spot tooling schedules every tier."""
    required: list[dict[str, Any]] = []
    if placement == "on-demand":
        required.append(scheme.on_demand_requirement())
    elif placement == "spot":
        required.append(scheme.spot_requirement())
    if spec.resources.gpu_product:
        required.append({"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [spec.resources.gpu_product]})
    affinity: dict[str, Any] = {}
    if required:
        affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": [{"matchExpressions": required}]
        }
    if placement == "prefer-spot":
        affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [
            {"weight": 100, "preference": {"matchExpressions": [scheme.spot_requirement()]}}
        ]
    return affinity


def tolerations(spec: ModelServiceSpec, placement: str, scheme: CapacityScheme) -> list[dict[str, Any]]:
    out = []
    if spec.resources.gpus_per_replica > 0:
        out.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if placement != "on-demand":
        # Some clusters taint spot nodes so that only workloads that accept preemption land there.
        out.append(scheme.spot_toleration())
    return out


def zone_spread(tier: Tier | None, scheme: CapacityScheme, selector_labels: dict[str, str]) -> list[dict[str, Any]]:
    """capacity.zoneSpread as a topology spread constraint over the preset's zone label.
    ``preferred`` (the default): GPUs are scarce and unevenly spread over zones, so a hard
    constraint would leave replicas Pending while another zone has free GPUs; the
    scheduler still scores for an even spread. ``required`` trades that for never having
    more than maxSkew extra replicas in the one zone a spot preemption wave hits. A
    shared-pool server (no tier) is spread the default way."""
    mode, skew = ("preferred", 1) if tier is None else (tier.capacity.zone_spread, tier.capacity.zone_max_skew)
    if mode == "off":
        return []
    return [
        {
            "maxSkew": skew,
            "topologyKey": scheme.zone_label,
            "whenUnsatisfiable": "DoNotSchedule" if mode == "required" else "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels},
        }
    ]


def container_resources(spec: ModelServiceSpec) -> dict[str, Any]:
    r = spec.resources
    # Quantities as strings: that is how the apiserver returns them, so the no-write
    # comparison sees equal values.
    requests = {"cpu": r.cpu, "memory": r.memory}
    limits = {"memory": r.memory}
    if r.gpus_per_replica > 0:
        requests[GPU_RESOURCE] = str(r.gpus_per_replica)
        limits[GPU_RESOURCE] = str(r.gpus_per_replica)
    return {"requests": requests, "limits": limits}


def pod_spec(
    ms: ModelService,
    tier: Tier | None,
    placement: str,
    pod_labels: dict[str, str],
    config: OperatorConfig,
    profile: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec = ms.spec
    port = spec.engine.port
    health = {"httpGet": {"path": "/health", "port": "http"}}
    container: dict[str, Any] = {
        "name": "engine",
        "image": engines.engine_image(spec, config),
        "command": engines.engine_command(spec, profile),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": container_resources(spec),
        # Loading weights takes minutes: the startup probe covers spec.engine.startupTimeoutSeconds
        # (default 30 min) so liveness never kills a pod that is still loading.
        "startupProbe": {
            **health,
            "periodSeconds": engines.STARTUP_PERIOD_SECONDS,
            "failureThreshold": engines.startup_failure_threshold(spec),
        },
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**health, "periodSeconds": 15, "failureThreshold": 4, "timeoutSeconds": 5},
        # Stay up while the endpoint removal propagates, so no new request is routed to
        # a pod that is about to receive SIGTERM; the engine then finishes in-flight work.
        "lifecycle": {"preStop": {"sleep": {"seconds": config.pre_stop_sleep_seconds}}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    # Empty lists are left out: the apiserver omits them, and a field we send but the
    # live object lacks would make every reconcile look like a change.
    if env := engines.engine_env(spec):
        container["env"] = env
    if env_from := engines.engine_env_from(spec):
        container["envFrom"] = env_from
    # Tensor-parallel workers exchange tensors through shared memory; the container
    # default of 64 MiB is far too small.
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    if cache := engines.model_cache_volume(spec):
        volumes.append(cache[0])
        container["volumeMounts"].append(cache[1])
    if spec.engine.kind == "simulator":
        container["volumeMounts"].append({"name": "profile", "mountPath": engines.PROFILE_MOUNT_DIR, "readOnly": True})
        volumes.append(
            {
                "name": "profile",
                "configMap": {
                    "name": routing_configmap_name(ms),
                    "items": [{"key": engines.PROFILE_FILE, "path": engines.PROFILE_FILE}],
                },
            }
        )
    selector_labels: dict[str, str] = {
        k: pod_labels[k] for k in (SERVICE_LABEL, TIER_LABEL, ROLE_LABEL, POOL_LABEL) if k in pod_labels
    }
    if TIER_LABEL in pod_labels:
        selector_labels.pop(POOL_LABEL, None)  # a tier's pods spread as one group, whatever their pool
    result: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": config.pre_stop_sleep_seconds + config.termination_grace_seconds,
        "enableServiceLinks": False,
    }
    if spread := zone_spread(tier, config.capacity(), selector_labels):
        result["topologySpreadConstraints"] = spread
    affinity = node_affinity(spec, placement, config.capacity())
    if affinity:  # an empty affinity would come back from the API server dropped: a write each time
        result["affinity"] = {"nodeAffinity": affinity}
    pod_tolerations = tolerations(spec, placement, config.capacity())
    if pod_tolerations:
        result["tolerations"] = pod_tolerations
    return result


def _deployment(
    ms: ModelService,
    tier: Tier,
    pool: str,
    role: str,
    replicas: int,
    placement: str,
    config: OperatorConfig,
    profile: dict[str, Any] | None = None,
) -> dict[str, Any]:
    pod_labels = {**labels(ms, tier, role), POOL_LABEL: pool}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(ms, tier_object_name(ms, tier, pool), pod_labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {k: v for k, v in pod_labels.items() if k != MANAGED_BY}},
            # Add the new pod before removing an old one: a tier keeps its capacity
            # during a rollout (at the price of one spare GPU replica).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": {
                # Annotation-based Prometheus discovery (the chart's PodMonitor selects the
                # same pods by label where the Prometheus Operator runs).
                "metadata": {"labels": pod_labels, "annotations": engines.scrape_annotations(ms.spec)},
                "spec": pod_spec(ms, tier, placement, pod_labels, config, profile),
            },
        },
    }


def tier_deployments(
    ms: ModelService,
    tier: Tier,
    total: int,
    config: OperatorConfig,
    profile: dict[str, Any] | None = None,
    promoted: int = 0,
    fallback: int = 0,
) -> list[dict[str, Any]]:
    """``promoted``: serving pods of the tier promoted from standby (owned by no
    Deployment, autoscale_standby.py); the main pool runs that many fewer. ``fallback``:
    on-demand replicas covering spot pods that stayed Pending (spot.fallbackAfterSeconds)."""
    tier_pools = pools(tier, total, fallback)
    out = [
        _deployment(
            ms, tier, pool, "serving", n - min(n, promoted) if pool == "main" else n, placement, config, profile
        )
        for pool, n, placement in tier_pools
    ]
    if tier.prewarm.standby > 0:
        # Standby capacity is spare: it goes where the tier's main pool may go.
        placement = next(p.placement for p in tier_pools if p.pool == "main")
        standby = _deployment(ms, tier, "standby", "standby", tier.prewarm.standby, placement, config, profile)
        # Started with sleep mode: the operator puts a loaded standby to sleep and wakes
        # it on promotion (autoscale_standby.py).
        engine = standby["spec"]["template"]["spec"]["containers"][0]
        engine["command"] = engine["command"] + standby_engine_args(ms.spec)
        if env := standby_engine_env(ms.spec):
            engine["env"] = [*engine.get("env", []), *env]
        out.append(standby)
    return out


def tier_service(ms: ModelService, tier: Tier) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ms, tier_object_name(ms, tier), labels(ms, tier, "serving")),
        "spec": {
            "clusterIP": "None",
            "selector": {SERVICE_LABEL: ms.name, TIER_LABEL: tier.name, ROLE_LABEL: "serving"},
            "ports": [{"name": "http", "port": ms.spec.engine.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def tier_pdb(ms: ModelService, tier: Tier) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(ms, tier_object_name(ms, tier), labels(ms, tier, "serving")),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {SERVICE_LABEL: ms.name, TIER_LABEL: tier.name, ROLE_LABEL: "serving"}},
            # A pod that never became ready (stuck loading) may always be evicted;
            # otherwise it would block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


# --------------------------------------------------------------------------- shared pool


def pool_object_name(ms: ModelService) -> str:
    return f"{ms.name}-pool"


def pool_replicas(spec: ModelServiceSpec, replicas: Mapping[str, int] | None = None) -> int:
    """Servers of the shared pool: the sum of the tiers' serving replicas (min, or the
    autoscaler's choice) clamped to sharedPool.replicas [min, max]."""
    assert spec.shared_pool is not None
    want = sum(serving_replicas(t, replicas) for t in spec.tiers)
    r = spec.shared_pool.replicas
    return max(r.min, min(r.max, want))


def pool_labels(ms: ModelService) -> dict[str, str]:
    return {**labels(ms, None, "serving"), POOL_LABEL: SHARED_POOL}


def pool_objects(
    ms: ModelService, total: int, config: OperatorConfig, profile: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The shared pool's Deployment, headless Service and PodDisruptionBudget
    ``<ms>-pool``: on-demand placement (spot is per tier, refused with sharedPool)."""
    pod_labels = pool_labels(ms)
    selector = {k: v for k, v in pod_labels.items() if k != MANAGED_BY}
    name = pool_object_name(ms)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(ms, name, pod_labels),
        "spec": {
            "replicas": total,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": engines.scrape_annotations(ms.spec)},
                "spec": pod_spec(ms, None, "on-demand", pod_labels, config, profile),
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ms, name, pod_labels),
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": "http", "port": ms.spec.engine.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(ms, name, pod_labels),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
    return [deployment, service, pdb]
