"""The SLO tier: the one definition every part uses.

A tier's service-level objective travels from the ModelService (``spec.tiers[]``, which
adds replicas, capacity and pre-warm settings to it) through the routing document to
the router, and from a scenario file into the fleet simulator. All of them validate it
with :class:`SLOTier`; ``kubetier.policy.routing.TierSLO.from_api`` turns it into the
routing policy's hot-path struct.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kubetier.api.common import DNS_LABEL_PATTERN, MAX_TIER_NAME_LENGTH, ApiModel


class SLOTier(ApiModel):
    """One SLO tier: the latency targets a request of this tier is held to."""

    name: str = Field(
        min_length=1,
        max_length=MAX_TIER_NAME_LENGTH,
        pattern=DNS_LABEL_PATTERN,
        description="Tier name (a DNS label); clients ask for it in X-Kubetier-Tier.",
    )
    ttft_ms: int = Field(gt=0, le=3_600_000, description="Time-to-first-token target in milliseconds.")
    tpot_ms: int = Field(gt=0, le=60_000, description="Time-per-output-token target in milliseconds.")
    attainment_percent: float = Field(
        default=90,
        gt=0,
        le=100,
        description=(
            "Share of requests that must meet both targets; below it the ModelService reports SLOAtRisk. "
            "Requests the router refuses (429) or that fail count as misses."
        ),
    )
    priority: int = Field(
        default=0,
        ge=0,
        le=1000,
        description=(
            "Higher is more important. Meant to order power capping (lowest priority capped first) and "
            "preemption: accepted but not acted on yet (no power controller or preemption exists)."
        ),
    )
    mean_output_tokens: int = Field(
        default=256, ge=1, le=1_000_000, description="Expected output length, for the worst-future-iteration check."
    )
    on_late: Literal["reject", "queue"] = Field(
        default="reject", description="What the router does with a request that can no longer meet its TTFT."
    )

    def as_slo_tier(self) -> SLOTier:
        """Just the SLO fields (drops what a subclass such as the CRD's ``Tier`` adds)."""
        if type(self) is SLOTier:
            return self
        return SLOTier.model_validate(self.model_dump(include=set(SLOTier.model_fields)))
