"""What the node agent and the PowerBudget controller exchange, through the Node object.

The agent (one per GPU node) writes its reading as JSON in the Node annotation
``kubetier.io/power-report`` at a fixed cadence; the controller writes the cap it wants
the node's GPUs to run under in ``kubetier.io/power-cap`` (watts per GPU; absent or
empty: uncapped). Annotations rather than a CRD: nothing to install beyond RBAC on
nodes, and ``kubectl describe node`` shows both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from kubetier.api.common import ApiModel

POWER_REPORT_ANNOTATION = "kubetier.io/power-report"
POWER_CAP_ANNOTATION = "kubetier.io/power-cap"
# NoSchedule taint the PowerBudget controller puts on a domain's idle GPU nodes while the
# domain holds all the GPU servers its oversubscriptionRatio allows (value: the PowerBudget).
PLACEMENT_TAINT_KEY = "kubetier.io/power-budget"

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


def node_cap_fraction(annotations: Mapping[str, str]) -> float | None:
    """The share of their maximum draw a node's GPUs run capped at, or None (uncapped or unknown).

    For the router: a server on a capped node is a slower server
    (:func:`kubetier.policy.power_cap.capped_model` at this share of the profile's TDP).
    The deeper of the cap the controller asked for (``kubetier.io/power-cap``, which the
    agent applies within milliseconds) and the caps the agent's last report says are in
    force (it lags by up to one report interval when a cap is lifted): a server counts as
    capped from the moment the cap is requested until the agent reports it gone. Works
    for every backend alike (NVML on real GPUs, the simulated one), since it reads the
    Node, not the engine. Unknown when there is no readable report (the GPUs' maximum is
    what turns watts into a share).
    """
    raw = annotations.get(POWER_REPORT_ANNOTATION)
    if not raw:
        return None
    try:
        report = NodePowerReport.model_validate_json(raw)
    except ValueError:
        return None
    if not report.gpus:
        return None
    shares = [g.cap_watts / g.max_watts for g in report.gpus if g.cap_watts is not None]
    try:
        requested = parse_cap_annotation(annotations.get(POWER_CAP_ANNOTATION))
    except ValueError:
        requested = None
    if requested is not None:
        shares.append(requested / min(g.max_watts for g in report.gpus))
    if not shares:
        return None
    share = min(shares)
    return share if share < 1.0 else None
