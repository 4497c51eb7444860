"""On-demand fallback decided by kubetier (``capacity.fallbackAfterSeconds``), from what the
operator observed (pure: no I/O, the clock is a parameter).

A tier with ``spot: preferred`` and ``fallbackAfterSeconds`` runs its main pool on spot
only, and a Deployment ``<ms>-<tier>-fallback`` on on-demand whose replicas this module
decides with :func:`kubetier.policy.spot.plan_capacity` (SkyServe's fallback and return):

* a main-pool replica that stays unscheduled (Pending: no spot capacity obtained) for
  longer than the bound is covered by one on-demand replica (a replica that got a spot
  node and is still loading its model is capacity obtained: no fallback for it);
* once the main pool has been Ready on spot for the return period (the latest of the
  needed replicas' Ready times), the fallback goes back to zero; the router drains the
  fallback pods first (they get a deletionTimestamp and a preStop sleep).

Everything comes from the objects themselves (pod creation and Ready times, the live
fallback Deployment's replica count), so an operator restart loses nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetier.api.labels import POOL_LABEL, ROLE_LABEL, SERVICE_LABEL, TIER_LABEL
from kubetier.api.modelservice import ModelService, Tier
from kubetier.policy import sizing
from kubetier.policy.spot import CapacityPlan, SpotConfig, TierCapacity, plan_capacity

FALLBACK_POOL = "fallback"


@dataclass(frozen=True)
class FallbackDecision:
    tier: str
    current: int  # fallback replicas the live Deployment has
    plan: CapacityPlan

    @property
    def replicas(self) -> int:
        return self.plan.fallback_replicas

    def event(self, cfg: SpotConfig, bound_s: float) -> tuple[str, str, str] | None:
        """(type, reason, message) when the decision changes the fallback, else None."""
        if self.replicas > self.current:
            return (
                "Warning",
                "SpotFallback",
                f"tier {self.tier}: spot replicas not ready within fallbackAfterSeconds ({bound_s:.0f}s): "
                f"on-demand fallback {self.current} -> {self.replicas} ({self.plan.reason})",
            )
        if self.replicas < self.current:
            return (
                "Normal",
                "ReturnToSpot",
                f"tier {self.tier}: {self.plan.reason} (return period {cfg.return_after_s:.0f}s); "
                f"on-demand fallback {self.current} -> {self.replicas}",
            )
        return None


def uses_operator_fallback(tier: Tier) -> bool:
    return tier.capacity.spot == "preferred" and tier.capacity.fallback_after_seconds is not None


def _time(text: Any) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _ready_since(pod: Mapping[str, Any]) -> float | None:
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == "Ready" and c.get("status") == "True":
            return _time(c.get("lastTransitionTime")) or 0.0
    return None


def fallback_name(ms: ModelService, tier: Tier) -> str:
    return f"{ms.name}-{tier.name}-{FALLBACK_POOL}"


def tier_view(
    ms: ModelService,
    tier: Tier,
    pods: list[dict[str, Any]],
    children: Mapping[tuple[str, str], dict[str, Any]],
    wanted: int,
    now: float,
) -> TierCapacity:
    """The policy's view of a tier's spot main pool: ``wanted`` replicas of it are needed."""
    main = [
        p
        for p in pods
        if (labels := (p.get("metadata") or {}).get("labels") or {}).get(SERVICE_LABEL) == ms.name
        and labels.get(TIER_LABEL) == tier.name
        and labels.get(ROLE_LABEL) == "serving"
        and labels.get(POOL_LABEL, "main") == "main"
        and not p["metadata"].get("deletionTimestamp")
    ]
    ready_times = sorted(t for p in main if (t := _ready_since(p)) is not None)
    scheduled = [p for p in main if (p.get("spec") or {}).get("nodeName")]
    unscheduled = [p for p in main if not (p.get("spec") or {}).get("nodeName")]
    # A replica the Deployment has not created yet counts as pending since now: a
    # scale-up must not look like spot that never came.
    created = [_time(p["metadata"].get("creationTimestamp")) or now for p in unscheduled]
    missing = max(0, wanted - len(main))
    pending = len(unscheduled) + missing
    pending_since = min(created) if created else (now if missing else None)
    steady_since = ready_times[wanted - 1] if wanted and len(ready_times) >= wanted else None
    live = children.get(("Deployment", fallback_name(ms, tier)))
    current = int(((live or {}).get("spec") or {}).get("replicas") or 0)
    return TierCapacity(
        wanted=wanted,
        # Spot capacity obtained: scheduled replicas (Ready or still loading). The return
        # waits for them to be Ready and steady (spot_steady_since).
        spot_ready=len(scheduled),
        spot_pending=pending,
        noticed=0,
        pending_since=pending_since,
        spot_steady_since=steady_since if wanted else 0.0,  # nothing needed: steady forever
        fallback=current,
    )


def main_wanted(ms: ModelService, replicas: Mapping[str, int] | None) -> dict[str, int]:
    """Replicas each tier's spot main pool should run: its serving replicas (the
    autoscaler's choice, clamped) less the on-demand floor."""
    out = {}
    for tier in ms.spec.tiers:
        total = sizing.serving_replicas(sizing.TierSizing(tier.name, tier.replicas.min, tier.replicas.max), replicas)
        out[tier.name] = total - min(tier.capacity.on_demand_floor, total)
    return out


def decide(
    ms: ModelService,
    pods: list[dict[str, Any]],
    children: Mapping[tuple[str, str], dict[str, Any]],
    main_wanted: Mapping[str, int],
    now: float,
    cfg: SpotConfig,
) -> dict[str, FallbackDecision]:
    """The fallback replicas per tier that uses the operator's fallback; ``main_wanted``:
    replicas each tier's main pool should run (its serving replicas less the on-demand floor)."""
    out = {}
    for tier in ms.spec.tiers:
        if not uses_operator_fallback(tier):
            continue
        bound = float(tier.capacity.fallback_after_seconds or cfg.fallback_after_s)
        view = tier_view(ms, tier, pods, children, main_wanted.get(tier.name, 0), now)
        tier_cfg = SpotConfig(
            fallback_after_s=bound,
            return_after_s=cfg.return_after_s,
            over_provision=0,
            zone_cooldown_s=cfg.zone_cooldown_s,
        )
        out[tier.name] = FallbackDecision(tier.name, view.fallback, plan_capacity(view, now, tier_cfg))
    return out
