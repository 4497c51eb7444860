"""The ``PowerBudget`` API (kubetier.io/v1alpha1, cluster-scoped).

A power domain (rack, row) is the set of nodes its selector matches. The design: a
controller caps the least important work first when the domain's draw crosses
``capThresholdPercent`` of ``budgetWatts``, caps everything above
``hardCapThresholdPercent``, and lifts caps below ``uncapThresholdPercent``
(hysteresis, after POLCA). No PowerBudget controller exists yet: the API is accepted and
validated, and the descriptions say so, so nobody mistakes it for a working cap.
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


_NOT_ACTED_ON = " Accepted but not acted on yet: no PowerBudget controller runs, nothing is capped."


class PowerBudgetSpec(ApiModel):
    """A power domain and its budget. Accepted but not acted on yet: no PowerBudget
    controller runs, so no power is measured and nothing is capped."""

    model_config = api_config(rules=[_THRESHOLD_ORDER])

    node_selector: NodeSelector = Field(description="Nodes that form this power domain." + _NOT_ACTED_ON)
    budget_watts: int = Field(gt=0, le=100_000_000, description="Power the domain may draw, in watts." + _NOT_ACTED_ON)
    cap_threshold_percent: int = Field(
        default=90,
        gt=0,
        le=100,
        description="Above this share of the budget, cap the lowest-priority work." + _NOT_ACTED_ON,
    )
    uncap_threshold_percent: int = Field(
        default=80, ge=0, lt=100, description="Below this share, lift caps (hysteresis)." + _NOT_ACTED_ON
    )
    hard_cap_threshold_percent: int = Field(
        default=97, gt=0, le=100, description="Above this share, cap everything." + _NOT_ACTED_ON
    )

    @model_validator(mode="after")
    def _order(self) -> PowerBudgetSpec:
        if not (self.uncap_threshold_percent < self.cap_threshold_percent <= self.hard_cap_threshold_percent):
            raise ValueError(_THRESHOLD_ORDER["message"])
        return self


class PowerBudgetStatus(ApiModel):
    observed_generation: int = Field(default=0, ge=0)
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    nodes: int = Field(
        default=0, ge=0, description="Nodes the selector matches (not set yet: no PowerBudget controller runs)."
    )
    drawn_watts: float | None = Field(
        default=None,
        ge=0,
        description="Latest measured draw of the domain (not set yet: no PowerBudget controller runs).",
    )
    capped_pods: int = Field(
        default=0,
        ge=0,
        description="Engine pods currently power-capped (always 0 yet: no PowerBudget controller runs).",
    )


class PowerBudget(ApiModel):
    model_config = api_config(extra="ignore")

    api_version: Literal["kubetier.io/v1alpha1"] = Field(default="kubetier.io/v1alpha1", alias="apiVersion")
    kind: Literal["PowerBudget"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: PowerBudgetSpec
    status: PowerBudgetStatus | None = None
