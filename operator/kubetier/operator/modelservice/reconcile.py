"""One reconcile of one ModelService: observe, render, apply what differs, prune what is
no longer wanted, write status if it changed, post Events on condition transitions.

Decisions live in pure functions (``desired``, ``compute_status``, ``covers``,
``transitions``); this module only sequences them around ``KubeClient`` calls. A
reconcile with nothing to change makes reads only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import pydantic

from kubetier.api.errors import describe
from kubetier.api.modelservice import GROUP, KIND, VERSION, ModelService
from kubetier.kube import KubeClient
from kubetier.kube.events import event_body
from kubetier.operator.modelservice import engines
from kubetier.operator.modelservice.desired import desired
from kubetier.operator.modelservice.diff import covers, first_difference
from kubetier.operator.modelservice.model import FIELD_MANAGER, SERVICE_LABEL, Observed, OperatorConfig
from kubetier.operator.modelservice.not_acted_on import fields_not_acted_on
from kubetier.operator.modelservice.profile import Unsatisfiable
from kubetier.operator.modelservice.router_feed import fetch_attainment
from kubetier.operator.modelservice.status import capacity_problem, compute_status, status_changed, transitions
from kubetier.operator.modelservice.watches import CHILD_KINDS, owned_by
from kubetier.operator.spot import fallback as spot_fallback
from kubetier.policy.spot import SpotConfig

log = logging.getLogger("kubetier.operator")


@dataclass
class Outcome:
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    events: list[str] = field(default_factory=list)
    problem: Unsatisfiable | None = None


class ClusterView(Protocol):
    """Where a reconcile reads the cluster from: the watch cache (``watches``) in the
    operator, plain lists (``ListedView``) in tests and one-off tools."""

    def observe(self, ms: ModelService, profile_configmap: dict[str, str] | None) -> Observed: ...

    def remember(self, obj: dict[str, Any]) -> None: ...


class ListedView:
    """Lists what one reconcile needs (six lists per call: the cost the watches remove)."""

    def __init__(self) -> None:
        self.children: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.nodes: list[dict[str, Any]] = []

    async def load(self, api: KubeClient, ms: ModelService) -> ListedView:
        namespace, uid = ms.namespace, ms.metadata.get("uid", "")
        selector = f"{SERVICE_LABEL}={ms.name}"
        for kind in CHILD_KINDS:
            for obj in await api.list(kind, namespace, selector):
                if owned_by(obj, uid):
                    self.children[(kind, obj["metadata"]["name"])] = obj
        self.pods = await api.list("Pod", namespace, selector)
        self.nodes = await api.list("Node")
        return self

    def observe(self, ms: ModelService, profile_configmap: dict[str, str] | None) -> Observed:
        return Observed(children=self.children, pods=self.pods, nodes=self.nodes, profile_configmap=profile_configmap)

    def remember(self, obj: dict[str, Any]) -> None:
        pass


async def profile_configmap(api: KubeClient, ms: ModelService) -> dict[str, str] | None:
    """data of the ConfigMap spec.latencyProfile.configMapRef names (None: no such
    ConfigMap, or no reference). Read per reconcile: it is any ConfigMap of the user's."""
    ref = ms.spec.latency_profile.config_map_ref
    if ref is None:
        return None
    cm = await api.get("ConfigMap", ms.namespace, ref.name)
    return (cm.get("data") or {}) if cm else None


def _event(ms_body: dict[str, Any], event: dict[str, str], now: dt.datetime) -> dict[str, Any]:
    involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": ms_body["metadata"]}
    return event_body(involved, event["type"], event["reason"], event["message"], FIELD_MANAGER, now)


async def _write_status(
    api: KubeClient,
    body: dict[str, Any],
    new: dict[str, Any],
    now: dt.datetime,
    outcome: Outcome,
    view: ClusterView | None = None,
) -> None:
    current = body.get("status")
    if not status_changed(current, new):
        return
    meta = body["metadata"]
    written = await api.patch_status(KIND, meta.get("namespace"), meta["name"], new)
    if view is not None and isinstance(written, dict) and written.get("metadata"):
        view.remember({"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, **written})
    outcome.status_written = True
    events = transitions(current, new)
    await asyncio.gather(*(api.create("Event", meta.get("namespace"), _event(body, e, now)) for e in events))
    outcome.events += [f"{e['type']}/{e['reason']}" for e in events]


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


async def reconcile(
    api: KubeClient,
    body: dict[str, Any],
    config: OperatorConfig,
    now: dt.datetime,
    *,
    view: ClusterView | None = None,
    attainment: Callable[[str], dict[str, float]] | None = None,
    migrations: Callable[[str], dict[str, int]] | None = None,
    replicas: Mapping[str, int] | None = None,
    scale_reasons: Mapping[str, str] | None = None,
) -> Outcome:
    """One reconcile of ``body``. ``view``: the cluster as cached (default: list it);
    ``attainment``: the router's per-tier attainment of a model (default: read
    ``config.router_status_url`` once); ``replicas``: serving replicas per tier as
    decided by the autoscaler (absent: replicas.min); ``scale_reasons``: why, per tier;
    ``migrations``: the routers' mid-stream migrations per tier of a model."""
    outcome = Outcome()
    try:
        # Status is ours and recomputed; parsing only the spec keeps an odd status from
        # blocking the reconcile.
        ms = ModelService.model_validate({k: v for k, v in body.items() if k != "status"})
    except pydantic.ValidationError as exc:
        message = "spec is invalid: " + "; ".join(describe(exc))
        outcome.problem = Unsatisfiable("InvalidSpec", message)
        await _write_status(api, body, invalid_spec_status(body, message, now), now, outcome, view)
        return outcome

    if view is None:
        view = await ListedView().load(api, ms)
    observed = replace(view.observe(ms, await profile_configmap(api, ms)), capacity=config.capacity())
    if attainment is not None:
        observed = replace(observed, attainment=attainment(ms.spec.model.name))
    elif config.router_status_url:
        observed = replace(observed, attainment=await fetch_attainment(config.router_status_url, ms.spec.model.name))
    if migrations is not None:
        observed = replace(observed, migrations=migrations(ms.spec.model.name))
    # On-demand fallback for spot tiers whose spot replicas stay unready (kubetier.operator.spot.fallback).
    fallback = spot_fallback.decide(
        ms,
        observed.pods,
        observed.children,
        spot_fallback.main_wanted(ms, replicas),
        now.timestamp(),
        SpotConfig(return_after_s=config.spot_return_after_s),
    )
    fallback_replicas = {name: d.replicas for name, d in fallback.items()}
    try:
        objects = desired(ms, observed, config, replicas, fallback_replicas)
    except Unsatisfiable as exc:
        # Keep what runs (a missing profile ConfigMap must not tear serving pods down);
        # report it and try again on the next reconcile.
        outcome.problem = exc
        objects = None

    if objects is not None:
        wanted = set()
        stale = []
        for obj in objects:
            key = (obj["kind"], obj["metadata"]["name"])
            wanted.add(key)
            live = observed.children.get(key)
            if live is not None and covers(live, obj):
                continue
            why = "missing" if live is None else f"differs at {first_difference(live, obj)}"
            log.info("applying %s/%s (%s)", *key, why)
            stale.append(obj)

        dropped: list[str] = []

        async def apply(obj: dict[str, Any]) -> None:
            applied = await api.apply(obj)
            if isinstance(applied, dict) and applied.get("metadata"):
                view.remember({"kind": obj["kind"], "apiVersion": obj["apiVersion"], **applied})
                if obj["kind"] == "Deployment" and engines.image_volume_dropped(obj, applied):
                    dropped.append(obj["metadata"]["name"])

        # The routing ConfigMap first (the simulator's pods mount it), then the rest at
        # once: independent objects, and one round trip instead of one per child.
        first = [o for o in stale if o["kind"] == "ConfigMap"]
        for batch in (first, [o for o in stale if o["kind"] != "ConfigMap"]):
            await asyncio.gather(*(apply(o) for o in batch))
        outcome.applied += [f"{o['kind']}/{o['metadata']['name']}" for o in stale]
        for decision in fallback.values():
            tier = ms.spec.tier(decision.tier)
            found = decision.event(
                SpotConfig(return_after_s=config.spot_return_after_s), float(tier.capacity.fallback_after_seconds or 0)
            )
            if found is not None:
                kind, reason, message = found
                await api.create(
                    "Event", ms.namespace, _event(body, {"type": kind, "reason": reason, "message": message}, now)
                )
                outcome.events.append(f"{kind}/{reason}")
        if dropped and outcome.problem is None:
            outcome.problem = Unsatisfiable("ImageVolumeUnsupported", engines.IMAGE_VOLUME_UNSUPPORTED)
        for key in sorted(set(observed.children) - wanted):
            log.info("deleting %s/%s (no longer desired)", *key)
            await api.delete(key[0], ms.namespace, key[1])
            outcome.deleted.append(f"{key[0]}/{key[1]}")

    outcome.problem = outcome.problem or capacity_problem(ms, observed, replicas)
    new_status = compute_status(
        ms,
        observed,
        now,
        config,
        outcome.problem,
        current=body.get("status"),
        replicas=replicas,
        not_acted_on=fields_not_acted_on(ms),
        scale_reasons=scale_reasons,
        fallback=fallback_replicas,
    )
    await _write_status(api, body, new_status, now, outcome, view)
    return outcome
