"""Plain data the pure reconcile functions work on: operator settings and what the
operator observed in the cluster. No I/O here; ``reconcile.observe`` fills these in."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetier.operator.identity import DOMAIN, FIELD_MANAGER

__all__ = ["DOMAIN", "FIELD_MANAGER", "Observed", "OperatorConfig"]

# Labels (docs/contracts.md).
MANAGED_BY = "app.kubernetes.io/managed-by"
SERVICE_LABEL = "kubetier.io/service"
TIER_LABEL = "kubetier.io/tier"
ROLE_LABEL = "kubetier.io/role"
ROUTING_CONFIG_LABEL = "kubetier.io/routing-config"
# Which of a tier's Deployments a pod belongs to (main, floor, standby): keeps the
# selectors of a tier's Deployments disjoint.
POOL_LABEL = "kubetier.io/pool"

CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
ZONE_LABEL = "topology.kubernetes.io/zone"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


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
    # Serving replicas per tier chosen by the autoscaler (a later issue); a tier that is
    # absent runs replicas.min.
    tier_replicas: dict[str, int] = field(default_factory=dict)
    # Observed SLO attainment per tier in percent, from the router (a later issue).
    attainment: dict[str, float] = field(default_factory=dict)
