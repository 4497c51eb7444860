"""Back to spot: spot-eligible replicas that fell back to on-demand move back, one at a
time, once spot capacity has been steady and has room (``should_return_to_spot``).

Fallback itself needs no controller: a spot-eligible pod carries no required capacity
term, so the scheduler (or Karpenter) places it on on-demand when spot is short. The move
back is a pod deletion: its ReplicaSet starts a replacement, which the spot preference
places on spot; the router drains the old pod first (it has a deletionTimestamp).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubetier.api.labels import POOL_LABEL, ROLE_LABEL, ROLE_SERVING, SERVICE_LABEL, TIER_LABEL
from kubetier.api.modelservice import ModelService
from kubetier.kube import KubeClient
from kubetier.kube.events import event_body
from kubetier.operator.modelservice.model import GPU_RESOURCE, OperatorConfig
from kubetier.operator.spot.notices import node_notice
from kubetier.policy.spot import SpotConfig, should_return_to_spot

COMPONENT = "kubetier-spot"


def _gpus(quantity: Any) -> int:
    try:
        return int(str(quantity or "0"))
    except ValueError:
        return 0


def _ready(obj: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def _requested_gpus(pod: dict[str, Any]) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        total += _gpus((res.get("limits") or {}).get(GPU_RESOURCE) or (res.get("requests") or {}).get(GPU_RESOURCE))
    return total


def _age_s(obj: dict[str, Any], now: dt.datetime) -> float:
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return 0.0
    return (now - dt.datetime.fromisoformat(str(created).replace("Z", "+00:00"))).total_seconds()


async def return_to_spot(
    api: KubeClient, body: dict[str, Any], config: OperatorConfig, now: dt.datetime, cfg: SpotConfig
) -> list[str]:
    """Delete at most one on-demand replica per spot-eligible tier when spot can take it;
    returns the pods moved."""
    ms = ModelService.model_validate({k: v for k, v in body.items() if k != "status"})
    tiers = [t for t in ms.spec.tiers if t.capacity.spot != "never"]
    if not tiers:
        return []
    scheme = config.capacity()
    nodes = await api.list("Node")
    kind_of = {n["metadata"]["name"]: scheme.capacity_type(n["metadata"].get("labels") or {}) for n in nodes}
    per = max(1, ms.spec.resources.gpus_per_replica)
    # Spot nodes that are up, schedulable, under no notice: free GPUs and how long the
    # steadiest one has been there.
    spot_free, spot_steady = 0, 0.0
    for n in nodes:
        name = n["metadata"]["name"]
        if kind_of[name] != "spot" or (n.get("spec") or {}).get("unschedulable") or not _ready(n):
            continue
        if node_notice(n, now.timestamp()) is not None:
            continue
        used = sum(_requested_gpus(p) for p in await api.list("Pod", None, field_selector=f"spec.nodeName={name}"))
        free = _gpus(((n.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE)) - used
        if free >= per:
            spot_free += free
            spot_steady = max(spot_steady, _age_s(n, now))
    moved: list[str] = []
    pods = await api.list("Pod", ms.namespace, f"{SERVICE_LABEL}={ms.name},{ROLE_LABEL}={ROLE_SERVING}")
    for tier in tiers:
        mine = [
            p
            for p in pods
            if (p["metadata"].get("labels") or {}).get(TIER_LABEL) == tier.name
            and not p["metadata"].get("deletionTimestamp")
        ]
        on_demand = [
            p
            for p in mine
            if (p["metadata"].get("labels") or {}).get(POOL_LABEL, "main") == "main"
            and kind_of.get((p.get("spec") or {}).get("nodeName", "")) == "on-demand"
        ]
        ready = sum(_ready(p) for p in mine)
        if not should_return_to_spot(True, len(on_demand), ready, spot_free, per, spot_steady, cfg):
            continue
        victim = sorted(on_demand, key=lambda p: p["metadata"]["name"])[0]
        name = victim["metadata"]["name"]
        await api.delete("Pod", ms.namespace, name)
        await api.create(
            "Event",
            ms.namespace,
            event_body(
                {"apiVersion": body.get("apiVersion", ""), "kind": "ModelService", "metadata": body["metadata"]},
                "Normal",
                "ReturnToSpot",
                f"tier {tier.name}: spot capacity steady for {spot_steady:.0f}s with {spot_free} free GPU(s); "
                f"moving {name} off on-demand",
                COMPONENT,
                now,
            ),
        )
        spot_free -= per
        moved.append(name)
    return moved
