"""One reconcile of one ModelService: observe, render, apply what differs, prune what is
no longer wanted, write status if it changed, post Events on condition transitions.

Decisions live in pure functions (``desired``, ``compute_status``, ``covers``,
``transitions``); this module only sequences them around ``KubeClient`` calls. A
reconcile with nothing to change makes reads only.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import pydantic

from kubetier.api.modelservice import GROUP, KIND, VERSION, ModelService
from kubetier.kube import KubeClient
from kubetier.kube.events import event_body
from kubetier.operator.modelservice.desired import desired
from kubetier.operator.modelservice.diff import covers, first_difference
from kubetier.operator.modelservice.model import FIELD_MANAGER, SERVICE_LABEL, Observed, OperatorConfig
from kubetier.operator.modelservice.profile import Unsatisfiable
from kubetier.operator.modelservice.router_feed import fetch_attainment
from kubetier.operator.modelservice.status import capacity_problem, compute_status, status_changed, transitions

log = logging.getLogger("kubetier.operator")

# The kinds desired() produces, i.e. what the operator lists, applies and prunes.
CHILD_KINDS = ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget")


@dataclass
class Outcome:
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    events: list[str] = field(default_factory=list)
    problem: Unsatisfiable | None = None


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or ())


async def observe(api: KubeClient, ms: ModelService) -> Observed:
    namespace, uid = ms.namespace, ms.metadata.get("uid", "")
    selector = f"{SERVICE_LABEL}={ms.name}"
    children: dict[tuple[str, str], dict[str, Any]] = {}
    for kind in CHILD_KINDS:
        for obj in await api.list(kind, namespace, selector):
            if _owned_by(obj, uid):
                children[(kind, obj["metadata"]["name"])] = obj
    pods = await api.list("Pod", namespace, selector)
    nodes = await api.list("Node")
    profile_data = None
    ref = ms.spec.latency_profile.config_map_ref
    if ref is not None:
        cm = await api.get("ConfigMap", namespace, ref.name)
        profile_data = (cm.get("data") or {}) if cm else None
    return Observed(children=children, pods=pods, nodes=nodes, profile_configmap=profile_data)


def _event(ms_body: dict[str, Any], event: dict[str, str], now: dt.datetime) -> dict[str, Any]:
    involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": ms_body["metadata"]}
    return event_body(involved, event["type"], event["reason"], event["message"], FIELD_MANAGER, now)


async def _write_status(
    api: KubeClient, body: dict[str, Any], new: dict[str, Any], now: dt.datetime, outcome: Outcome
) -> None:
    current = body.get("status")
    if not status_changed(current, new):
        return
    meta = body["metadata"]
    await api.patch_status(KIND, meta.get("namespace"), meta["name"], new)
    outcome.status_written = True
    for event in transitions(current, new):
        await api.create("Event", meta.get("namespace"), _event(body, event, now))
        outcome.events.append(f"{event['type']}/{event['reason']}")


def invalid_spec_status(body: dict[str, Any], error: str, now: dt.datetime) -> dict[str, Any]:
    """Status for an object the apiserver admitted but the models refuse (a CRD older
    than the operator, say): Degraded, never a crash loop."""
    generation = body.get("metadata", {}).get("generation", 0)
    stamp = now.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    previous = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or ()}

    def cond(ctype: str, status: str, reason: str, message: str) -> dict[str, Any]:
        old = previous.get(ctype)
        since = old["lastTransitionTime"] if old and old.get("status") == status else stamp
        return {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message[:32768],
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }

    return {
        **{k: v for k, v in (body.get("status") or {}).items() if k in ("tiers", "endpoint")},
        "observedGeneration": generation,
        "conditions": [
            cond("Ready", "False", "Degraded", error),
            cond("Progressing", "False", "InvalidSpec", "nothing is rolled out for an invalid spec"),
            cond("Degraded", "True", "InvalidSpec", error),
            cond("SLOAtRisk", "Unknown", "InvalidSpec", "no measurements for an invalid spec"),
        ],
    }


async def reconcile(api: KubeClient, body: dict[str, Any], config: OperatorConfig, now: dt.datetime) -> Outcome:
    outcome = Outcome()
    try:
        # Status is ours and recomputed; parsing only the spec keeps an odd status from
        # blocking the reconcile.
        ms = ModelService.model_validate({k: v for k, v in body.items() if k != "status"})
    except pydantic.ValidationError as exc:
        message = "spec is invalid: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        outcome.problem = Unsatisfiable("InvalidSpec", message)
        await _write_status(api, body, invalid_spec_status(body, message, now), now, outcome)
        return outcome

    observed = await observe(api, ms)
    if config.router_status_url:
        observed = replace(observed, attainment=await fetch_attainment(config.router_status_url, ms.spec.model.name))
    try:
        objects = desired(ms, observed, config)
    except Unsatisfiable as exc:
        # Keep what runs (a missing profile ConfigMap must not tear serving pods down);
        # report it and try again on the next reconcile.
        outcome.problem = exc
        objects = None

    if objects is not None:
        wanted = set()
        for obj in objects:
            key = (obj["kind"], obj["metadata"]["name"])
            wanted.add(key)
            live = observed.children.get(key)
            if live is not None and covers(live, obj):
                continue
            why = "missing" if live is None else f"differs at {first_difference(live, obj)}"
            log.info("applying %s/%s (%s)", *key, why)
            await api.apply(obj)
            outcome.applied.append(f"{key[0]}/{key[1]}")
        for key in sorted(set(observed.children) - wanted):
            log.info("deleting %s/%s (no longer desired)", *key)
            await api.delete(key[0], ms.namespace, key[1])
            outcome.deleted.append(f"{key[0]}/{key[1]}")

    outcome.problem = outcome.problem or capacity_problem(ms, observed)
    new_status = compute_status(ms, observed, now, config, outcome.problem, current=body.get("status"))
    await _write_status(api, body, new_status, now, outcome)
    return outcome
