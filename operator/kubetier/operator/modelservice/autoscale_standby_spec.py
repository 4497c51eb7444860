"""Standby servers, the pure part (no I/O): names, the standby engine flags, which pods
are promoted and the patch that promotes one. The design and the I/O: autoscale_standby.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from kubetier.api.labels import (
    POOL_LABEL,
    POOL_PROMOTED,
    PROMOTED_AT_ANNOTATION,
    ROLE_LABEL,
    ROLE_SERVING,
    ROLE_STANDBY,
    STANDBY_ASLEEP_ANNOTATION,
    TIER_LABEL,
)
from kubetier.api.modelservice import ModelServiceSpec

ASLEEP_ANNOTATION = STANDBY_ASLEEP_ANNOTATION  # "level1", or "awake" (engine without sleep mode)
PROMOTED_POOL = POOL_PROMOTED


def sleep_mode_supported(spec: ModelServiceSpec) -> bool:
    return spec.engine.kind in ("vllm", "simulator")


def standby_engine_args(spec: ModelServiceSpec) -> list[str]:
    """Extra engine flags of a standby pod: sleep mode where the engine has it."""
    return ["--enable-sleep-mode"] if sleep_mode_supported(spec) else []


def standby_engine_env(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    """vLLM serves /sleep and /wake_up only in its server dev mode."""
    return [{"name": "VLLM_SERVER_DEV_MODE", "value": "1"}] if spec.engine.kind == "vllm" else []


def pod_meta(pod: dict[str, Any]) -> dict[str, Any]:
    return pod.get("metadata") or {}


def pod_labels(pod: dict[str, Any]) -> dict[str, str]:
    return pod_meta(pod).get("labels") or {}


def pod_live(pod: dict[str, Any]) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return not pod_meta(pod).get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def is_promoted(pod: dict[str, Any]) -> bool:
    labels = pod_labels(pod)
    return labels.get(ROLE_LABEL) == ROLE_SERVING and labels.get(POOL_LABEL) == PROMOTED_POOL


def promoted_serving(pods: Iterable[dict[str, Any]], tier: str) -> int:
    """Live promoted pods of ``tier``: serving, but owned by no Deployment."""
    return sum(1 for p in pods if is_promoted(p) and pod_labels(p).get(TIER_LABEL) == tier and pod_live(p))


def is_asleep_standby(pod: dict[str, Any]) -> bool:
    return pod_labels(pod).get(ROLE_LABEL) == ROLE_STANDBY and bool(
        (pod_meta(pod).get("annotations") or {}).get(ASLEEP_ANNOTATION)
    )


def promotion_patch(owner: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The pod patch that moves a standby into rotation (JSON merge patch: the owner list
    is replaced, so the standby ReplicaSet's reference goes and the ModelService
    controls the pod; no ReplicaSet adopts a pod that has a controller)."""
    return {
        "metadata": {
            "labels": {ROLE_LABEL: ROLE_SERVING, POOL_LABEL: PROMOTED_POOL},
            "annotations": {
                PROMOTED_AT_ANNOTATION: now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                ASLEEP_ANNOTATION: None,
            },
            "ownerReferences": [{**owner, "blockOwnerDeletion": False}],
        }
    }
