"""Per-tier SLO attainment as the router measured it, for ``status.tiers[].attainmentPercent``
and the ``SLOAtRisk`` condition.

The router serves ``GET /kubetier/status`` (``kubetier.api.router_status``: per model,
per tier: requests, completed, sloMet, rejected, failed, ...). The operator reads it once per reconcile when
``KUBETIER_ROUTER_STATUS_URL`` (or ``--router-status-url``) names it; the Helm chart sets
it to the router's Service. A router that cannot be reached leaves attainment unknown:
status must never flap to "at risk" because a scrape failed.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from pydantic import ValidationError

from kubetier.api.errors import describe
from kubetier.api.router_status import RouterStatus
from kubetier.policy.attainment import MIN_JUDGED_REQUESTS, attainment_percent, judged_requests

log = logging.getLogger("kubetier.operator")

# Kept for callers; the threshold is defined in kubetier.policy.attainment.
MIN_REQUESTS = MIN_JUDGED_REQUESTS


def attainment_from_status(status: dict[str, Any], model: str, min_requests: int = MIN_REQUESTS) -> dict[str, float]:
    """Attainment percent per tier of ``model`` from the router's status document
    (``kubetier.api.router_status``), computed from the router's counts with
    ``kubetier.policy.attainment`` (a refused or failed request is a miss), so an older
    router that left refusals out of its own percentage is still read the same way.
    Tiers with fewer than ``min_requests`` judged requests are left out (noise)."""
    try:
        doc = RouterStatus.model_validate(status)
    except ValidationError as exc:
        log.info("router status document not understood: %s", "; ".join(describe(exc)))
        return {}
    found = doc.models.get(model)
    if found is None:
        return {}
    out = {}
    for name, counts in found.tiers.items():
        if judged_requests(counts.completed, counts.rejected, counts.failed) < min_requests:
            continue
        pct = attainment_percent(
            min(counts.slo_met, counts.completed), counts.completed, counts.rejected, counts.failed
        )
        if pct is not None:
            out[name] = round(pct, 2)
    return out


async def fetch_attainment(url: str, model: str, timeout_s: float = 2.0) -> dict[str, float]:
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            resp = await client.get(url)
            resp.raise_for_status()
            return attainment_from_status(resp.json(), model)
    except (httpx.HTTPError, ValueError) as exc:
        log.info("router status %s unavailable: %s", url, exc)
        return {}
