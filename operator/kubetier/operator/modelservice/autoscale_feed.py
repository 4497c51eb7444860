"""What the autoscaler reads, turned into the policy's types: the routers' status
documents (``GET /kubetier/status``, one per router replica) and the tier's pods.

Pure functions over plain dicts; ``autoscaler.py`` fetches the documents. Counters in a
status document (requests, rejected, completed) are cumulative per router process, so
the per-interval figures are differences against the previous document of the same
router; a counter that went down means the router restarted, and its new value is the
interval's figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetier.api.labels import POD_DELETION_COST_ANNOTATION as DELETION_COST
from kubetier.api.labels import ROLE_LABEL, ROLE_SERVING, ROLE_STANDBY, TIER_LABEL
from kubetier.operator.modelservice.autoscale_standby_spec import ASLEEP_ANNOTATION
from kubetier.policy.autoscale import ServerState, TierDemand, merge_demand

__all__ = ["DELETION_COST", "RouterCounters", "router_bins", "router_load", "server_states", "tier_demands"]


@dataclass
class RouterCounters:
    """The previous cumulative counters of one router, per tier."""

    seen: dict[str, dict[str, int]] = field(default_factory=dict)

    def delta(self, tier: str, key: str, now_value: int) -> int:
        prev = self.seen.setdefault(tier, {}).get(key)
        self.seen[tier][key] = now_value
        if prev is None:
            return 0  # first look at this router: no interval yet
        return now_value - prev if now_value >= prev else now_value


def tier_demands(
    docs: Mapping[str, dict[str, Any]],
    model: str,
    tiers: Iterable[str],
    counters: dict[str, RouterCounters],
) -> dict[str, TierDemand]:
    """One merged TierDemand per tier from every router's status document (keyed by the
    router's URL or pod). A router that does not know the model contributes nothing."""
    names = list(tiers)
    parts: dict[str, list[TierDemand]] = {t: [] for t in names}
    for router, doc in docs.items():
        tallies = ((doc.get("models") or {}).get(model) or {}).get("tiers") or {}
        c = counters.setdefault(router, RouterCounters())
        for t in names:
            tally = tallies.get(t)
            if tally is None:
                continue
            pct = tally.get("attainmentPercent")
            parts[t].append(
                TierDemand(
                    tier=t,
                    waiting=int(tally.get("waiting", 0)),
                    arrivals=c.delta(t, "requests", int(tally.get("requests", 0))),
                    rejected=c.delta(t, "rejected", int(tally.get("rejected", 0))),
                    completed=c.delta(t, "completed", int(tally.get("completed", 0))),
                    attainment_percent=float(pct) if pct is not None else None,
                )
            )
    return {t: merge_demand(p) if p else TierDemand(tier=t) for t, p in parts.items()}


def router_load(docs: Mapping[str, dict[str, Any]], model: str) -> dict[str, tuple[int, int]]:
    """(running, KV tokens) per server id (``<namespace>/<pod>``) as the routers see it:
    each router corrects its count from the engine's /metrics, so the routers agree up
    to their own in-flight requests; the largest view is taken."""
    out: dict[str, tuple[int, int]] = {}
    for doc in docs.values():
        for s in ((doc.get("models") or {}).get(model) or {}).get("servers") or ():
            sid = str(s.get("id", ""))
            run, kv = int(s.get("running", 0)), int(s.get("kvTokens", 0))
            old = out.get(sid)
            out[sid] = (max(run, old[0]), max(kv, old[1])) if old else (run, kv)
    return out


def router_bins(docs: Mapping[str, dict[str, Any]], model: str) -> dict[str, str]:
    """The tier bin of each shared-pool server (``pooled``) as a router puts it
    (docs/shared-pool.md); the first router that lists a server decides."""
    out: dict[str, str] = {}
    for doc in docs.values():
        for s in ((doc.get("models") or {}).get(model) or {}).get("servers") or ():
            if s.get("pooled") and s.get("tier"):
                out.setdefault(str(s.get("id", "")), str(s["tier"]))
    return out


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or ()
    )


def _created_s(pod: dict[str, Any]) -> float:
    import datetime as dt

    stamp = (pod.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return 0.0
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def server_states(
    pods: Iterable[dict[str, Any]],
    load: Mapping[str, tuple[int, int]],
    kv_capacity_tokens: int,
    bins: Mapping[str, str] | None = None,
) -> list[ServerState]:
    """A ServerState per serving or standby pod (terminating pods count as draining). A
    shared-pool pod has no tier label: its tier is its bin in ``bins`` (:func:`router_bins`),
    so the autoscaler decides each tier over the servers its bin holds now."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        role = labels.get(ROLE_LABEL)
        if role not in (ROLE_SERVING, ROLE_STANDBY) or (pod.get("status") or {}).get("phase") in (
            "Succeeded",
            "Failed",
        ):
            continue
        sid = f"{meta.get('namespace')}/{meta.get('name')}"
        running, kv = load.get(sid, (0, 0))
        standby = role == ROLE_STANDBY
        out.append(
            ServerState(
                server_id=sid,
                tier=labels.get(TIER_LABEL) or (bins or {}).get(sid, ""),
                # a standby is promotable once its engine loaded and went to sleep
                ready=_ready(pod) and (not standby or bool((meta.get("annotations") or {}).get(ASLEEP_ANNOTATION))),
                draining=bool(meta.get("deletionTimestamp")),
                standby=standby,
                running=running,
                kv_usage=kv / kv_capacity_tokens if kv_capacity_tokens else 0.0,
                started_s=_created_s(pod),
            )
        )
    return out
