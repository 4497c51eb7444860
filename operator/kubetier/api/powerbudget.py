"""The ``PowerBudget`` API (kubetier.io/v1alpha1, cluster-scoped).

A power domain (rack, row) is the set of nodes its selector matches. The PowerBudget
controller (``kubetier.operator.powerbudget``) sums the power the node agents report
(``kubetier agent``, Node annotation ``kubetier.io/power-report``), caps the least
important work first when the domain's draw crosses ``capThresholdPercent`` of
``budgetWatts``, caps everything above ``hardCapThresholdPercent``, and lifts caps below
``uncapThresholdPercent`` (hysteresis, after POLCA), by writing the cap to each node's
``kubetier.io/power-cap`` annotation, which its agent applies. The decisions are
``kubetier.policy.power``.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import Field, model_validator

from kubetier.api.common import ApiModel, Condition, api_config, cel

KIND: Final = "PowerBudget"
PLURAL = "powerbudgets"

_MAX_LABEL_VALUE = 63


class LabelSelectorRequirement(ApiModel):
    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"items": {"type": "string", "maxLength": _MAX_LABEL_VALUE}},
    )


class NodeSelector(ApiModel):
    """A metav1.LabelSelector over nodes."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)


_THRESHOLD_ORDER = cel(
    "self.uncapThresholdPercent < self.capThresholdPercent && self.capThresholdPercent <= self.hardCapThresholdPercent",
    "thresholds must satisfy uncapThresholdPercent < capThresholdPercent <= hardCapThresholdPercent",
)


_CAP_ORDER = cel(
    "self.brakePercentOfMax <= self.capPercentOfMax",
    "brakePercentOfMax must not exceed capPercentOfMax (the brake is the deeper cap)",
)


class PowerBudgetSpec(ApiModel):
    """A power domain and its budget; the PowerBudget controller in ``kubetier operator``
    acts on every field (docs/power.md)."""

    model_config = api_config(rules=[_THRESHOLD_ORDER, _CAP_ORDER])

    node_selector: NodeSelector = Field(description="Nodes that form this power domain.")
    budget_watts: int = Field(gt=0, le=100_000_000, description="Power the domain may draw, in watts.")
    cap_threshold_percent: int = Field(
        default=90, gt=0, le=100, description="Above this share of the budget, cap the lowest-priority work."
    )
    uncap_threshold_percent: int = Field(
        default=80, ge=0, lt=100, description="Below this share, lift caps (hysteresis)."
    )
    hard_cap_threshold_percent: int = Field(default=97, gt=0, le=100, description="Above this share, cap everything.")
    oversubscription_ratio: float = Field(
        default=1.3,
        ge=1.0,
        le=3.0,
        description="GPU servers (GPU nodes with engine pods) the domain may host, at most this multiple of "
        "budgetWatts / (gpuMaxWatts x GPUs per node), and beyond budget/TDP only as far as the measured p99 draw "
        "fits under capThresholdPercent (status.serversAllowed). Enforced on placement: while the domain holds "
        "that many, its idle GPU nodes carry the NoSchedule taint kubetier.io/power-budget=<name> (status."
        "closedNodes, condition PlacementHeld, Events on the held pods); running servers are never evicted.",
    )
    gpu_max_watts: int = Field(
        default=700,
        gt=0,
        le=10_000,
        description="A GPU's maximum draw (TDP), for GPUs whose agent never reported: they count at this much.",
    )
    cap_percent_of_max: int = Field(
        default=60, gt=0, le=100, description="A capped node's cap, per GPU, as a share of its maximum draw."
    )
    brake_percent_of_max: int = Field(
        default=45, gt=0, le=100, description="Every node's cap while braking (above hardCapThresholdPercent)."
    )
    stale_after_seconds: int = Field(
        default=10,
        ge=1,
        le=3600,
        description="A node whose report is older than this counts at its maximum draw (fail-safe).",
    )
    escalate_after_seconds: int = Field(
        default=3,
        ge=0,
        le=3600,
        description="Wait this long after a cap change before capping the next priority group: at least the "
        "telemetry delay plus the actuation latency, so the previous cap shows in the readings first.",
    )
    lift_after_seconds: int = Field(
        default=30,
        ge=0,
        le=86_400,
        description="Lift one group of caps after the draw stayed below uncapThresholdPercent this long. "
        "30 s: in the fleet simulator 15 s made caps flap (twice the cap changes, more brakes).",
    )
    window_seconds: int = Field(
        default=300, ge=10, le=86_400, description="Window of status.p99Watts (the oversubscription judgement)."
    )
    trend_lookahead_seconds: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="Judge capThresholdPercent on the draw projected this far ahead along its rising trend (0: the "
        "latest reading alone), so group caps land before a ramp does rather than one telemetry-plus-actuation delay "
        "after it. 2 s: in the fleet simulator it kept five scenarios under the budget (0 s on 0.1 s samples) without "
        "a brake, and cost the tight tier less than 1 s (docs/power.md). The brake still waits for the draw itself.",
    )

    @model_validator(mode="after")
    def _order(self) -> PowerBudgetSpec:
        if not (self.uncap_threshold_percent < self.cap_threshold_percent <= self.hard_cap_threshold_percent):
            raise ValueError(_THRESHOLD_ORDER["message"])
        if self.brake_percent_of_max > self.cap_percent_of_max:
            raise ValueError(_CAP_ORDER["message"])
        return self


class PowerBudgetStatus(ApiModel):
    observed_generation: int = Field(default=0, ge=0)
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    nodes: int = Field(default=0, ge=0, description="Nodes the selector matches.")
    drawn_watts: float | None = Field(
        default=None, ge=0, description="Latest draw of the domain (stale nodes counted at their maximum)."
    )
    capped_pods: int = Field(default=0, ge=0, description="Engine pods on power-capped nodes.")
    budget_watts: int | None = Field(default=None, ge=0, description="spec.budgetWatts, for kubectl get.")
    p99_watts: float | None = Field(default=None, ge=0, description="p99 of the domain draw over spec.windowSeconds.")
    percent_of_budget: float | None = Field(default=None, ge=0, description="drawnWatts as a share of the budget.")
    level: Literal["Normal", "Capping", "Braking"] | None = Field(
        default=None, description="Normal: no caps; Capping: low-priority groups capped; Braking: every node capped."
    )
    capped_nodes: int = Field(default=0, ge=0, description="Nodes asked to run capped now.")
    capped_summary: str | None = Field(
        default=None, max_length=512, description="Capped nodes per tier, e.g. 'batch 2/2, interactive 0/1'."
    )
    capped_by_tier: dict[str, int] = Field(default_factory=dict, description="Capped nodes per serving tier.")
    stale_nodes: list[str] = Field(
        default_factory=list, max_length=1024, description="Nodes counted at their maximum (no fresh agent report)."
    )
    servers: int = Field(default=0, ge=0, description="GPU servers placed: GPU nodes of the domain with engine pods.")
    servers_allowed: int | None = Field(
        default=None, ge=0, description="GPU servers the domain may host (oversubscriptionRatio, measured p99)."
    )
    closed_nodes: list[str] = Field(
        default_factory=list,
        max_length=1024,
        description="Idle GPU nodes closed to new GPU servers (taint kubetier.io/power-budget) while servers = "
        "serversAllowed.",
    )
    held_pods: list[str] = Field(
        default_factory=list,
        max_length=1024,
        description="Engine pods (namespace/name) the scheduler left Pending because of that taint.",
    )
    seconds_above_cap: float = Field(default=0, ge=0, description="Time the draw spent above capThresholdPercent.")
    seconds_above_hard_cap: float = Field(
        default=0, ge=0, description="Time the draw spent above hardCapThresholdPercent."
    )
    seconds_above_budget: float = Field(default=0, ge=0, description="Time the draw spent above budgetWatts.")
    brake_events: int = Field(default=0, ge=0, description="Times the domain crossed hardCapThresholdPercent.")
    last_decision: str | None = Field(default=None, max_length=1024, description="Why the last caps are what they are.")


class PowerBudget(ApiModel):
    model_config = api_config(extra="ignore")

    api_version: Literal["kubetier.io/v1alpha1"] = Field(default="kubetier.io/v1alpha1", alias="apiVersion")
    kind: Literal["PowerBudget"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: PowerBudgetSpec
    status: PowerBudgetStatus | None = None
