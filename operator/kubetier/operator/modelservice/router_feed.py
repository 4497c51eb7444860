"""Per-tier SLO attainment as the router measured it, for ``status.tiers[].attainmentPercent``
and the ``SLOAtRisk`` condition.

The router serves ``GET /kubetier/status`` (per model, per tier: requests, sloMet,
attainmentPercent, ...). The operator reads it once per reconcile when
``KUBETIER_ROUTER_STATUS_URL`` (or ``--router-status-url``) names it; the Helm chart sets
it to the router's Service. A router that cannot be reached leaves attainment unknown:
status must never flap to "at risk" because a scrape failed.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

log = logging.getLogger("kubetier.operator")

# Below this many finished requests a tier's attainment is noise, not a measurement.
MIN_REQUESTS = 5


def attainment_from_status(status: dict[str, Any], model: str, min_requests: int = MIN_REQUESTS) -> dict[str, float]:
    """Attainment percent per tier of ``model`` from the router's status document."""
    tiers = (status.get("models") or {}).get(model, {}).get("tiers") or {}
    out = {}
    for name, tally in tiers.items():
        pct = tally.get("attainmentPercent")
        if pct is not None and int(tally.get("completed", 0)) + int(tally.get("failed", 0)) >= min_requests:
            out[name] = float(pct)
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
