"""How many serving replicas a tier runs, on which capacity, and whether the cluster's
nodes can hold that at all (pure; shared by the operator and the fleet simulator).

Inputs are plain structs, not API objects: the operator builds them from a
ModelService and from Node objects, the simulator from its scenario. The decision of
how many replicas a tier *should* run (the autoscaler) is an input here
(``chosen``), never something observed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from kubetier.api.labels import GPU_RESOURCE

SpotPolicy = Literal["never", "allowed", "preferred"]
# on-demand: required; either: spot or on-demand; prefer-spot: either, spot preferred;
# spot: required (over-provisioned spares, and the main pool when the operator itself
# handles the on-demand fallback: capacity.fallbackAfterSeconds).
Placement = Literal["on-demand", "either", "prefer-spot", "spot"]


@dataclass(frozen=True)
class TierSizing:
    """The sizing-relevant part of one tier's spec."""

    name: str
    min_replicas: int
    max_replicas: int
    spot: SpotPolicy = "never"
    on_demand_floor: int = 0
    standby: int = 0
    over_provision: int = 0  # extra replicas on spot (pool "spare")
    operator_fallback: bool = False  # main pool spot-only; the operator runs pool "fallback"
    fallback: int = 0  # on-demand fallback replicas decided now (kubetier.policy.spot.plan_capacity)


@dataclass(frozen=True)
class NodeCapacity:
    """What the sizing rules read of one node."""

    name: str
    gpus: int  # allocatable nvidia.com/gpu
    capacity_type: str | None = None  # karpenter.sh/capacity-type: on-demand or spot
    gpu_product: str | None = None  # nvidia.com/gpu.product
    schedulable: bool = True


class Pool(NamedTuple):
    pool: str  # "main", "floor", "spare" or "fallback"
    replicas: int
    placement: Placement


@dataclass(frozen=True)
class GpuNeed:
    total: int
    on_demand: int


@dataclass(frozen=True)
class CapacityProblem:
    reason: str  # NoNodeFitsReplica, InsufficientGPUs, InsufficientOnDemandGPUs
    message: str


def serving_replicas(tier: TierSizing, chosen: Mapping[str, int] | None = None) -> int:
    """The replicas ``chosen`` for the tier (by the autoscaler), clamped to
    [min, max]; ``min`` when nothing was chosen."""
    wanted = (chosen or {}).get(tier.name, tier.min_replicas)
    return max(tier.min_replicas, min(tier.max_replicas, wanted))


def pools(tier: TierSizing, total: int) -> list[Pool]:
    """The tier's serving Deployments: (pool, replicas, placement).

    The floor is on-demand whatever the policy; ``never`` is all on-demand. One
    Deployment cannot say "N pods on on-demand, the rest anywhere" (node affinity applies
    to every pod of a template), hence two pools when there is a floor.
    """
    if tier.spot == "never":
        return [Pool("main", total, "on-demand")]
    placement: Placement = "either" if tier.spot == "allowed" else "prefer-spot"
    if tier.operator_fallback:
        placement = "spot"
    out: list[Pool] = []
    on_demand = min(tier.on_demand_floor, total)
    if on_demand:
        out.append(Pool("floor", on_demand, "on-demand"))
    out.append(Pool("main", total - on_demand, placement))
    if tier.over_provision:
        out.append(Pool("spare", tier.over_provision, "spot"))
    if tier.operator_fallback:
        # Always rendered (0 replicas when spot is fine): the Deployment exists before it is needed.
        out.append(Pool("fallback", tier.fallback, "on-demand"))
    return out


def required_gpus(
    tiers: Iterable[TierSizing], gpus_per_replica: int, chosen: Mapping[str, int] | None = None
) -> GpuNeed:
    """GPUs the tiers ask for: in total (serving and standby), and on on-demand capacity."""
    total = on_demand = 0
    for tier in tiers:
        for pool in pools(tier, serving_replicas(tier, chosen)):
            total += pool.replicas * gpus_per_replica
            on_demand += pool.replicas * gpus_per_replica if pool.placement == "on-demand" else 0
        total += tier.standby * gpus_per_replica
    return GpuNeed(total, on_demand)


def capacity_problem(
    tiers: Iterable[TierSizing],
    gpus_per_replica: int,
    gpu_product: str | None,
    nodes: Iterable[NodeCapacity],
    chosen: Mapping[str, int] | None = None,
) -> CapacityProblem | None:
    """Whether the nodes can hold the tiers at all (allocatable, not free, GPUs): a
    spec that cannot fit is reported, not left Pending without a word."""
    if gpus_per_replica == 0:
        return None
    per = gpus_per_replica
    what = f"{GPU_RESOURCE} ({gpu_product})" if gpu_product else GPU_RESOURCE
    usable_nodes = [n for n in nodes if n.schedulable and (gpu_product is None or n.gpu_product == gpu_product)]
    if not any(n.gpus >= per for n in usable_nodes):
        return CapacityProblem(
            "NoNodeFitsReplica",
            f"spec.resources.gpusPerReplica: no schedulable node has {per} allocatable {what}",
        )
    need = required_gpus(tiers, per, chosen)
    usable = sum(n.gpus // per * per for n in usable_nodes)
    if need.total > usable:
        return CapacityProblem(
            "InsufficientGPUs",
            f"spec.tiers: replicas and standby need {need.total} {what}, schedulable nodes have {usable} allocatable",
        )
    on_demand = sum(n.gpus // per * per for n in usable_nodes if n.capacity_type == "on-demand")
    if need.on_demand > on_demand:
        return CapacityProblem(
            "InsufficientOnDemandGPUs",
            f"spec.tiers: on-demand replicas (spot: never, onDemandFloor) need {need.on_demand} {what}, "
            f"on-demand nodes have {on_demand} allocatable",
        )
    return None
