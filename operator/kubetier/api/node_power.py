"""What the node agent and the PowerBudget controller exchange, through the Node object.

The agent (one per GPU node) writes its reading as JSON in the Node annotation
``kubetier.io/power-report`` at a fixed cadence; the controller writes the cap it wants
the node's GPUs to run under in ``kubetier.io/power-cap`` (watts per GPU; absent or
empty: uncapped). Annotations rather than a CRD: nothing to install beyond RBAC on
nodes, and ``kubectl describe node`` shows both sides.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kubetier.api.common import ApiModel

POWER_REPORT_ANNOTATION = "kubetier.io/power-report"
POWER_CAP_ANNOTATION = "kubetier.io/power-cap"

_MAX_WATTS = 1_000_000.0


class GpuPower(ApiModel):
    index: int = Field(ge=0, le=1024, description="GPU index on the node (NVML order; simulated: engine order).")
    watts: float = Field(ge=0, le=_MAX_WATTS, description="Measured draw.")
    max_watts: float = Field(gt=0, le=_MAX_WATTS, description="The most it can draw (TDP / default power limit).")
    cap_watts: float | None = Field(default=None, gt=0, le=_MAX_WATTS, description="Cap in force; None: uncapped.")


class NodePowerReport(ApiModel):
    node: str = Field(min_length=1, max_length=253)
    backend: Literal["nvml", "simulated"]
    observed_at: float = Field(ge=0, description="Unix time of the reading (the agent's clock).")
    gpus: list[GpuPower] = Field(default_factory=list, max_length=1024)
    requested_cap_watts: float | None = Field(
        default=None, gt=0, le=_MAX_WATTS, description="The cap the controller asked for, as the agent read it."
    )
    actuation_ms: float | None = Field(
        default=None, ge=0, description="How long applying the last cap change took on this node."
    )
    error: str | None = Field(default=None, max_length=1024, description="Why the last read or actuation failed.")

    @property
    def watts(self) -> float:
        return sum(g.watts for g in self.gpus)

    @property
    def max_watts(self) -> float:
        return sum(g.max_watts for g in self.gpus)

    @property
    def capped(self) -> bool:
        return any(g.cap_watts is not None for g in self.gpus)


def parse_cap_annotation(value: str | None) -> float | None:
    """The controller's cap annotation: watts per GPU, or None (absent, empty, "none")."""
    if value is None or value.strip() in ("", "none"):
        return None
    try:
        cap = float(value)
    except ValueError:
        raise ValueError(f"{POWER_CAP_ANNOTATION}: {value!r} is not a number of watts") from None
    if not 0 < cap <= _MAX_WATTS:
        raise ValueError(f"{POWER_CAP_ANNOTATION}: {value!r} must be in (0, {_MAX_WATTS:g}] watts")
    return cap
