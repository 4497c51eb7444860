"""Plain data the pure reconcile functions work on: operator settings and what the
operator observed in the cluster. No I/O here; ``reconcile.observe`` fills these in."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetier.api.labels import CAPACITY_TYPE_LABEL as CAPACITY_TYPE_LABEL
from kubetier.api.labels import GPU_PRODUCT_LABEL as GPU_PRODUCT_LABEL
from kubetier.api.labels import GPU_RESOURCE as GPU_RESOURCE
from kubetier.api.labels import MANAGED_BY_LABEL
from kubetier.api.labels import POOL_LABEL as POOL_LABEL
from kubetier.api.labels import ROLE_LABEL as ROLE_LABEL
from kubetier.api.labels import ROUTING_CONFIG_LABEL as ROUTING_CONFIG_LABEL
from kubetier.api.labels import SERVICE_LABEL as SERVICE_LABEL
from kubetier.api.labels import TIER_LABEL as TIER_LABEL
from kubetier.api.labels import ZONE_LABEL as ZONE_LABEL
from kubetier.api.modelservice import Tier
from kubetier.operator.identity import DOMAIN, FIELD_MANAGER
from kubetier.policy.sizing import NodeCapacity, TierSizing
from kubetier.policy.spot import DEFAULT_SCHEME, CapacityScheme, capacity_scheme

__all__ = [
    "CAPACITY_TYPE_LABEL",
    "DOMAIN",
    "FIELD_MANAGER",
    "GPU_PRODUCT_LABEL",
    "GPU_RESOURCE",
    "MANAGED_BY",
    "POOL_LABEL",
    "ROLE_LABEL",
    "ROUTING_CONFIG_LABEL",
    "SERVICE_LABEL",
    "TIER_LABEL",
    "ZONE_LABEL",
    "Observed",
    "OperatorConfig",
    "node_capacity",
    "tier_sizing",
]

# Label and annotation keys are defined once, in kubetier.api.labels (docs/contracts.md);
# the names above are kept for the operator's modules.
MANAGED_BY = MANAGED_BY_LABEL


@dataclass(frozen=True)
class OperatorConfig:
    """Deployment-wide settings (Helm values become environment variables)."""

    vllm_image: str = "vllm/vllm-openai:v0.11.0"
    sglang_image: str = "lmsysorg/sglang:v0.5.4"
    # The kubetier image carries the engine simulator (`kubetier engine-sim`).
    simulator_image: str = "ghcr.io/kubetier/kubetier:0.1.0"
    router_service: str = "kubetier-router"
    router_namespace: str | None = None  # None: the ModelService's own namespace
    router_port: int = 8080
    # The router's status endpoint (…/kubetier/status): per-tier attainment for status.
    router_status_url: str | None = None
    # Seconds the pod keeps serving after it is marked for deletion, so the router and
    # EndpointSlices stop sending it new requests before SIGTERM arrives.
    pre_stop_sleep_seconds: int = 15
    # After SIGTERM, vLLM finishes in-flight requests; long generations need minutes.
    termination_grace_seconds: int = 180
    # How nodes say spot or on-demand: a preset (karpenter, eks, gke, gke-preemptible,
    # aks) or, with capacity_label, a custom label and its spot value.
    capacity_scheme: str = DEFAULT_SCHEME
    capacity_label: str | None = None
    capacity_spot_value: str | None = None
    zone_label: str | None = None  # None: the preset's (topology.kubernetes.io/zone)
    # Spot steady this long before on-demand fallback replicas go (SkyServe-style return).
    spot_return_after_s: float = 300.0

    def capacity(self) -> CapacityScheme:
        return capacity_scheme(self.capacity_scheme, self.capacity_label, self.capacity_spot_value, self.zone_label)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        env: Mapping[str, str] = os.environ if environ is None else environ
        base = cls()
        return cls(
            vllm_image=env.get("KUBETIER_VLLM_IMAGE", base.vllm_image),
            sglang_image=env.get("KUBETIER_SGLANG_IMAGE", base.sglang_image),
            simulator_image=env.get("KUBETIER_SIMULATOR_IMAGE", base.simulator_image),
            router_service=env.get("KUBETIER_ROUTER_SERVICE", base.router_service),
            router_namespace=env.get("KUBETIER_ROUTER_NAMESPACE") or None,
            router_port=int(env.get("KUBETIER_ROUTER_PORT", base.router_port)),
            router_status_url=env.get("KUBETIER_ROUTER_STATUS_URL") or None,
            capacity_scheme=env.get("KUBETIER_CAPACITY_SCHEME") or base.capacity_scheme,
            capacity_label=env.get("KUBETIER_CAPACITY_LABEL") or None,
            capacity_spot_value=env.get("KUBETIER_CAPACITY_SPOT_VALUE") or None,
            zone_label=env.get("KUBETIER_ZONE_LABEL") or None,
            spot_return_after_s=float(env.get("KUBETIER_SPOT_RETURN_AFTER_S") or base.spot_return_after_s),
        )


@dataclass(frozen=True)
class Observed:
    """What the operator saw, as raw Kubernetes dicts."""

    # Children labelled kubetier.io/service=<name>, keyed by (kind, name).
    children: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    # data of the ConfigMap named by spec.latencyProfile.configMapRef (None: not found).
    profile_configmap: dict[str, str] | None = None
    # Observed SLO attainment per tier in percent, from the router (a later issue).
    attainment: dict[str, float] = field(default_factory=dict)
    # Streams migrated mid-stream per tier, summed over router replicas (router status).
    migrations: dict[str, int] = field(default_factory=dict)
    # How this cluster's nodes say spot or on-demand (OperatorConfig.capacity()).
    capacity: CapacityScheme = field(default_factory=lambda: capacity_scheme(DEFAULT_SCHEME))


def tier_sizing(tier: Tier, fallback: int = 0) -> TierSizing:
    """The policy's view of a tier (kubetier.policy.sizing); ``fallback``: on-demand
    fallback replicas the spot controller decided (kubetier.operator.spot.fallback)."""
    return TierSizing(
        name=tier.name,
        min_replicas=tier.replicas.min,
        max_replicas=tier.replicas.max,
        spot=tier.capacity.spot,
        on_demand_floor=tier.capacity.on_demand_floor,
        standby=tier.prewarm.standby,
        over_provision=tier.capacity.over_provision if tier.capacity.spot != "never" else 0,
        operator_fallback=tier.capacity.spot == "preferred" and tier.capacity.fallback_after_seconds is not None,
        fallback=fallback,
    )


def node_capacity(node: dict[str, Any], scheme: CapacityScheme | None = None) -> NodeCapacity:
    """The policy's view of a Node object (capacity type read with ``scheme``, default Karpenter's)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    raw = ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, "0")
    try:
        gpus = int(str(raw))
    except ValueError:
        gpus = 0
    return NodeCapacity(
        name=str((node.get("metadata") or {}).get("name", "")),
        gpus=gpus,
        capacity_type=(scheme or capacity_scheme(DEFAULT_SCHEME)).capacity_type(labels),
        gpu_product=labels.get(GPU_PRODUCT_LABEL),
        schedulable=not (node.get("spec") or {}).get("unschedulable"),
    )
