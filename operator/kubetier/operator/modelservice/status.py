"""A ModelService's status, computed purely from the spec and what was observed.

Conditions follow ``metav1.Condition``; ``Ready`` rolls up the others:

* ``Degraded``: the spec cannot be satisfied as it stands (profile missing or invalid,
  not enough schedulable GPUs of the product, no node big enough for one replica).
* ``Progressing``: some tier has fewer pods, ready pods or updated pods than it should.
* ``SLOAtRisk``: a tier's observed attainment is below its target, or a tier that
  should serve has no ready replica; ``Unknown`` until the router reports attainment.
* ``Ready``: not Degraded and every tier has all its serving replicas ready.
* ``FieldsNotActedOn``: the spec sets fields the operator accepts but does not act on
  yet (``not_acted_on.NOT_ACTED_ON_YET``; reason ``NotActedOnYet``, a Warning Event on
  the transition); it does not affect Ready.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from kubetier.api.modelservice import ModelService
from kubetier.operator.modelservice.desired import (
    pool_labels,
    pool_object_name,
    pool_replicas,
    pools,
    serving_replicas,
    tier_object_name,
)
from kubetier.operator.modelservice.model import (
    POOL_LABEL,
    ROLE_LABEL,
    SERVICE_LABEL,
    TIER_LABEL,
    Observed,
    OperatorConfig,
    node_capacity,
    tier_sizing,
)
from kubetier.operator.modelservice.profile import Unsatisfiable
from kubetier.policy import sizing

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "SLOAtRisk", "FieldsNotActedOn", "ScaledToZero")


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or ()
    )


def tier_statuses(
    ms: ModelService, observed: Observed, fallback: Mapping[str, int] | None = None
) -> list[dict[str, Any]]:
    capacity_of = {n["metadata"]["name"]: observed.capacity.capacity_type(_labels(n)) for n in observed.nodes}
    out = []
    for tier in ms.spec.tiers:
        pods = [
            p
            for p in observed.pods
            if _labels(p).get(SERVICE_LABEL) == ms.name
            and _labels(p).get(TIER_LABEL) == tier.name
            and not p["metadata"].get("deletionTimestamp")
        ]
        serving = [p for p in pods if _labels(p).get(ROLE_LABEL) == "serving"]
        standby = [p for p in pods if _labels(p).get(ROLE_LABEL) == "standby"]
        entry: dict[str, Any] = {
            "name": tier.name,
            "replicas": len(serving),
            "readyReplicas": sum(_pod_ready(p) for p in serving),
            "standbyReplicas": sum(_pod_ready(p) for p in standby),
            "spotReplicas": sum(capacity_of.get((p.get("spec") or {}).get("nodeName", "")) == "spot" for p in serving),
            "onDemandReplicas": sum(
                capacity_of.get((p.get("spec") or {}).get("nodeName", "")) == "on-demand" for p in serving
            ),
            "fallbackReplicas": (fallback or {}).get(tier.name, 0),
            "migrations": observed.migrations.get(tier.name, 0),
        }
        if tier.name in observed.attainment:
            entry["attainmentPercent"] = round(float(observed.attainment[tier.name]), 2)
        out.append(entry)
    return out


def _shared_pool_ready(ms: ModelService, observed: Observed) -> int:
    """Ready serving pods of the service's shared pool (spec.sharedPool)."""
    want = {k: v for k, v in pool_labels(ms).items() if k in (SERVICE_LABEL, ROLE_LABEL, POOL_LABEL)}
    return sum(
        _pod_ready(p)
        for p in observed.pods
        if all(_labels(p).get(k) == v for k, v in want.items()) and not p["metadata"].get("deletionTimestamp")
    )


def capacity_problem(
    ms: ModelService, observed: Observed, replicas: Mapping[str, int] | None = None
) -> Unsatisfiable | None:
    """Whether the cluster's nodes can hold the spec at all (kubetier.policy.sizing)."""
    found = sizing.capacity_problem(
        [tier_sizing(t) for t in ms.spec.tiers],
        ms.spec.resources.gpus_per_replica,
        ms.spec.resources.gpu_product,
        [node_capacity(n, observed.capacity) for n in observed.nodes],
        replicas,
    )
    return Unsatisfiable(found.reason, found.message) if found else None


def _rollout_incomplete(ms: ModelService, observed: Observed) -> list[str]:
    """Names of this service's Deployments whose rollout has not finished."""
    late = []
    for (kind, name), obj in observed.children.items():
        if kind != "Deployment":
            continue
        want = (obj.get("spec") or {}).get("replicas", 1)
        st = obj.get("status") or {}
        if (
            st.get("observedGeneration", 0) < obj["metadata"].get("generation", 0)
            or st.get("updatedReplicas", 0) < want
            or st.get("availableReplicas", 0) < want
            or st.get("replicas", 0) > want
        ):
            late.append(name)
    return sorted(late)


def _unschedulable(ms: ModelService, observed: Observed) -> list[str]:
    """Per tier, how many of its pods the scheduler could not place, and its reason."""
    out = []
    for tier in ms.spec.tiers:
        stuck = [
            c
            for p in observed.pods
            if _labels(p).get(SERVICE_LABEL) == ms.name
            and _labels(p).get(TIER_LABEL) == tier.name
            and not p["metadata"].get("deletionTimestamp")
            for c in (p.get("status") or {}).get("conditions") or ()
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        ]
        if stuck:
            out.append(f"{tier.name}: {len(stuck)} pod(s) unschedulable: {stuck[0].get('message', '')}"[:512])
    return out


def _timestamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def compute_status(
    ms: ModelService,
    observed: Observed,
    now: dt.datetime,
    config: OperatorConfig | None = None,
    spec_problem: Unsatisfiable | None = None,
    current: dict[str, Any] | None = None,
    replicas: Mapping[str, int] | None = None,
    not_acted_on: list[str] | None = None,
    scale_reasons: Mapping[str, str] | None = None,
    fallback: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The whole ``status`` in wire form. ``spec_problem`` is what rendering raised;
    ``current`` the status as stored (its lastTransitionTimes are kept when unchanged);
    ``replicas`` the serving replicas per tier as decided (absent: min);
    ``not_acted_on`` the spec fields the operator does not act on yet (one line each)."""
    config = config or OperatorConfig()
    generation = ms.metadata.get("generation", 0)
    tiers = tier_statuses(ms, observed, fallback)
    for entry, tier in zip(tiers, ms.spec.tiers):
        # the autoscaler's decision and why (kubetier.operator.modelservice.autoscaler)
        entry["desiredReplicas"] = serving_replicas(tier, replicas)
        if scale_reasons and scale_reasons.get(tier.name):
            entry["lastScaleReason"] = scale_reasons[tier.name][:1024]
    by_name = {t["name"]: t for t in tiers}
    problem = spec_problem or capacity_problem(ms, observed, replicas)

    short: list[str] = []  # tiers below their expected serving replicas
    if ms.spec.shared_pool is not None:
        # One pool serves every tier (the router decides the bins): its pods count.
        pool_want = pool_replicas(ms.spec, replicas)
        pool_ready = _shared_pool_ready(ms, observed)
        if pool_ready < pool_want:
            short.append(f"pool {pool_ready}/{pool_want} ready")
        missing = [n for n in [pool_object_name(ms)] if ("Deployment", n) not in observed.children]
    else:
        pool_want = pool_ready = 0
        for tier in ms.spec.tiers:
            want = serving_replicas(tier, replicas)
            have = by_name[tier.name]
            # Spot spares and on-demand fallback replicas are pods beyond the need; while a
            # fallback covers the spot pool, the need alone has to be ready.
            spares = tier.capacity.over_provision if tier.capacity.spot != "never" else 0
            covering = (fallback or {}).get(tier.name, 0)
            pods_expected = want + spares + covering
            ready_needed = want if covering else want + spares
            if (
                have["readyReplicas"] < ready_needed
                or have["replicas"] != pods_expected
                or have["standbyReplicas"] < tier.prewarm.standby
            ):
                short.append(f"{tier.name} {have['readyReplicas']}/{want} ready")
        missing = [
            name
            for tier in ms.spec.tiers
            for pool, _n, _p in pools(tier, serving_replicas(tier, replicas))
            if ("Deployment", name := tier_object_name(ms, tier, pool)) not in observed.children
        ]
    late = _rollout_incomplete(ms, observed)
    unschedulable = _unschedulable(ms, observed)

    conds: dict[str, tuple[str, str, str]] = {}
    if problem:
        conds["Degraded"] = ("True", problem.reason, problem.message)
    else:
        conds["Degraded"] = ("False", "AsExpected", "the spec fits the cluster")
    if missing:
        conds["Progressing"] = ("True", "Creating", "waiting for Deployments: " + ", ".join(sorted(missing)))
    elif unschedulable:
        # Not Degraded: capacity may yet appear (Karpenter, a freed node), but say why.
        conds["Progressing"] = ("True", "PodsUnschedulable", "; ".join(unschedulable))
    elif short or late:
        conds["Progressing"] = ("True", "RollingOut", "; ".join(short + [f"rollout of {n}" for n in late]))
    else:
        conds["Progressing"] = ("False", "Complete", "every tier runs its desired replicas")

    below = [
        f"{t.name} {by_name[t.name]['attainmentPercent']}% < {t.attainment_percent:g}%"
        for t in ms.spec.tiers
        if "attainmentPercent" in by_name[t.name] and by_name[t.name]["attainmentPercent"] < t.attainment_percent
    ]
    dark = [
        t.name
        for t in ms.spec.tiers
        if serving_replicas(t, replicas) > 0
        and by_name[t.name]["readyReplicas"] == 0
        and not (ms.spec.shared_pool is not None and pool_ready > 0)
    ]
    if below:
        conds["SLOAtRisk"] = ("True", "AttainmentBelowTarget", "; ".join(below))
    elif dark:
        conds["SLOAtRisk"] = ("True", "NoReadyReplicas", "no ready replica in tier(s): " + ", ".join(dark))
    elif not observed.attainment:
        conds["SLOAtRisk"] = ("Unknown", "NoMeasurements", "the router has not reported attainment yet")
    else:
        conds["SLOAtRisk"] = ("False", "AttainmentMet", "every tier meets its attainment target")

    if problem:
        conds["Ready"] = ("False", "Degraded", problem.message)
    elif short or missing:
        conds["Ready"] = ("False", "TiersNotReady", "; ".join(short) or "children are being created")
    else:
        conds["Ready"] = ("True", "AllTiersReady", "every tier has all its serving replicas ready")

    if not_acted_on:
        conds["FieldsNotActedOn"] = ("True", "NotActedOnYet", "; ".join(not_acted_on)[:32768])
    else:
        conds["FieldsNotActedOn"] = ("False", "AllFieldsActedOn", "the operator acts on every field the spec sets")

    at_zero = [
        t.name
        for t in ms.spec.tiers
        if serving_replicas(t, replicas) == 0 and by_name[t.name]["replicas"] == 0 and ms.spec.shared_pool is None
    ]
    if at_zero:
        conds["ScaledToZero"] = (
            "True",
            "Idle",
            "scaled to zero (the router holds a request and the autoscaler starts a server): " + ", ".join(at_zero),
        )
    else:
        conds["ScaledToZero"] = ("False", "Serving", "every tier has serving replicas")

    if current is None and ms.status is not None:
        current = ms.status.wire()
    previous = {c.get("type"): c for c in (current or {}).get("conditions") or ()}
    conditions = []
    for ctype in CONDITION_TYPES:
        status, reason, message = conds[ctype]
        before = previous.get(ctype)
        since = before["lastTransitionTime"] if before and before.get("status") == status else _timestamp(now)
        conditions.append(
            {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    router_ns = config.router_namespace or ms.namespace
    desired_total = sum(serving_replicas(t, replicas) for t in ms.spec.tiers)
    ready_total = sum(t["readyReplicas"] for t in tiers)
    if ms.spec.shared_pool is not None:
        desired_total, ready_total = pool_want, pool_ready
    return {
        "observedGeneration": generation,
        "conditions": conditions,
        "tiers": tiers,
        "endpoint": f"http://{config.router_service}.{router_ns}.svc:{config.router_port}/v1",
        "tierSummary": ",".join(t.name for t in ms.spec.tiers),
        "replicaSummary": f"{ready_total}/{desired_total}",
        "scaleSummary": " ".join(f"{t['desiredReplicas']}/{t['replicas']}" for t in tiers),
        "attainmentSummary": "/".join(
            f"{t['attainmentPercent']:g}" if "attainmentPercent" in t else "-" for t in tiers
        ),
    }


def status_changed(current: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    current = current or {}
    return any(current.get(key) != value for key, value in new.items())


def transitions(current: dict[str, Any] | None, new: dict[str, Any]) -> list[dict[str, str]]:
    """Events to post: one per condition whose status or reason changed."""
    before = {c.get("type"): c for c in (current or {}).get("conditions") or ()}
    events = []
    for cond in new["conditions"]:
        old = before.get(cond["type"])
        if old and (old.get("status"), old.get("reason")) == (cond["status"], cond["reason"]):
            continue
        if cond["type"] == "FieldsNotActedOn" and cond["status"] == "False" and old is None:
            continue  # nothing to say about a spec that only uses what works
        bad = (cond["type"] in ("Degraded", "SLOAtRisk", "FieldsNotActedOn") and cond["status"] == "True") or (
            cond["type"] == "Ready" and cond["status"] == "False" and cond["reason"] == "Degraded"
        )
        events.append(
            {
                "type": "Warning" if bad else "Normal",
                "reason": cond["reason"],
                "message": f"{cond['type']}={cond['status']}: {cond['message']}"[:1024],
            }
        )
    return events
