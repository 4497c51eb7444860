"""The autoscaler controller: every ``AUTOSCALE_INTERVAL_S`` per ModelService, read the
demand of every router replica and the tier's pods, run ``kubetier.policy.autoscale``
(with the pre-warm policy's keep-alive), and when a tier's desired serving replicas
change: mark the scale-in victim with ``controller.kubernetes.io/pod-deletion-cost``,
reconcile with the new replica counts (``Observed.tier_replicas``), and post one Event
per tier that changed (its reason names the rule and the figures).

Demand sources: the routers' ``/kubetier/status`` documents, one per router replica:
``KUBETIER_ROUTER_STATUS_URLS`` (comma-separated) when set, else the replicas the status
feed (router_feed.RouterStatusFeed) finds behind the router Service's EndpointSlices, else
the single ``--router-status-url``.

Scale-in drains through Kubernetes: the ReplicaSet deletes the pod with the lowest
deletion cost (the least-loaded one, marked here), the router sees its
``deletionTimestamp`` and stops sending to it, and the pod's preStop sleep plus its
termination grace period let in-flight streams finish.

The desired counts live in the operator's memory and in ``status.tiers[].desiredReplicas``
(read back after a restart, so a restarted operator does not fall back to
``replicas.min``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from kubetier.api.modelservice import GROUP, KIND, VERSION, ModelService
from kubetier.kube import KubeClient
from kubetier.kube.events import event_body
from kubetier.operator.modelservice.autoscale_feed import (
    DELETION_COST,
    RouterCounters,
    router_bins,
    router_load,
    server_states,
    tier_demands,
)
from kubetier.operator.modelservice.autoscale_standby import Promotion, awake_standbys, promote, sleep_standbys
from kubetier.operator.modelservice.autoscale_standby_spec import is_promoted
from kubetier.operator.modelservice.desired import owner_reference
from kubetier.operator.modelservice.model import FIELD_MANAGER, GPU_RESOURCE, SERVICE_LABEL, OperatorConfig
from kubetier.policy.autoscale import TierAutoscaler, TierScaling, target_concurrency
from kubetier.policy.latency import LatencyModel, load_profile
from kubetier.policy.prewarm import TierPrewarmer

log = logging.getLogger("kubetier.operator.autoscaler")

AUTOSCALE_INTERVAL_S = 2.0  # the Knative KPA's tick
ROUTER_URLS_ENV = "KUBETIER_ROUTER_STATUS_URLS"
# Expected seconds from a new pod to a ready engine (pre-warm lead time); vLLM 8B:
# 14 s engine start before weights, about 48 s for a full load.
EXPECTED_START_S = float(os.environ.get("KUBETIER_EXPECTED_START_SECONDS", "60"))


@dataclass
class ServiceScaler:
    """The autoscaler state of one ModelService (windows, histograms, counters)."""

    generation: int
    scaler: TierAutoscaler
    prewarmer: TierPrewarmer
    counters: dict[str, RouterCounters] = field(default_factory=dict)
    desired: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    kv_capacity: int = 0
    # one tick at a time: the 2 s timer and a router's demand push may both call
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _model(ms: ModelService) -> LatencyModel:
    src = ms.spec.latency_profile
    if src.inline is not None:
        return LatencyModel.from_dict(src.inline.wire())
    return load_profile(src.builtin or "llama-3.1-8b-h100")  # a ConfigMap profile: the default's shape


def tier_scalings(ms: ModelService, model: LatencyModel) -> list[TierScaling]:
    out = []
    for t in ms.spec.tiers:
        # the policy's target per server: the tier's TPOT under the profile, with a
        # prompt of 1,000 tokens (the router's host probe) and the tier's mean output
        target = target_concurrency(model, t.tpot_ms / 1000.0, 1000, t.mean_output_tokens)
        # the engine runs at most spec.engine.maxNumSeqs sequences, whatever the profile says
        target = min(target, max(1.0, ms.spec.engine.max_num_seqs * 0.7))
        out.append(
            TierScaling(
                name=t.name,
                ttft_s=t.ttft_ms / 1000.0,
                tpot_s=t.tpot_ms / 1000.0,
                target_per_server=target,
                min_replicas=t.replicas.min,
                max_replicas=t.replicas.max,
                on_demand_floor=t.capacity.on_demand_floor,
                # the standby Deployment holds prewarm.standby pods; the policy promotes
                # them (autoscale_standby.py) and the Deployment starts replacements
                standby=t.prewarm.standby,
                scale_to_zero=t.prewarm.scale_to_zero,
                keep_alive_s=float(t.prewarm.keep_alive_seconds),
                attainment_target_percent=t.attainment_percent,
                priority=t.priority,
                gpus_per_replica=ms.spec.resources.gpus_per_replica,
            )
        )
    return out


def desired_from_status(body: dict[str, Any]) -> dict[str, int]:
    """What an earlier operator decided (``status.tiers[].desiredReplicas``)."""
    out = {}
    for t in (body.get("status") or {}).get("tiers") or ():
        if isinstance(t.get("desiredReplicas"), int) and t.get("name"):
            out[t["name"]] = t["desiredReplicas"]
    return out


def service_scaler(shared: Any, body: dict[str, Any], ms: ModelService) -> ServiceScaler:
    """The ServiceScaler of this object in ``shared`` (the operator-wide state,
    ``runtime.shared(memo)``: kopf's per-object memo copies would each hold their own),
    created (seeded from status) or updated after a spec change."""
    states: dict[tuple[str, str], ServiceScaler] = shared.setdefault("autoscale", {})
    key = (ms.namespace, ms.name)
    gen = int(ms.metadata.get("generation", 0))
    st = states.get(key)
    model = _model(ms)
    if st is None:
        scalings = tier_scalings(ms, model)
        st = states[key] = ServiceScaler(
            gen,
            TierAutoscaler(scalings),
            TierPrewarmer([t.name for t in scalings]),
            kv_capacity=model.kv_capacity_tokens,
        )
        st.desired = {k: v for k, v in desired_from_status(body).items() if k in {t.name for t in scalings}}
    elif st.generation != gen:
        scalings = tier_scalings(ms, model)
        st.scaler.update_tiers(scalings)
        st.prewarmer = TierPrewarmer([t.name for t in scalings])
        st.generation = gen
        st.kv_capacity = model.kv_capacity_tokens
    return st


def forget(shared: Any, namespace: str, name: str) -> None:
    shared.get("autoscale", {}).pop((namespace, name), None)


def explicit_router_urls() -> bool:
    return bool(os.environ.get(ROUTER_URLS_ENV, "").strip())


def router_urls(config: OperatorConfig) -> list[str]:
    many = os.environ.get(ROUTER_URLS_ENV, "")
    urls = [u.strip() for u in many.split(",") if u.strip()]
    if not urls and config.router_status_url:
        urls = [config.router_status_url]
    return urls


async def fetch_docs(urls: list[str], timeout_s: float = 1.5) -> dict[str, dict[str, Any]]:
    async def one(client: httpx.AsyncClient, url: str) -> tuple[str, dict[str, Any] | None]:
        try:
            r = await client.get(url)
            r.raise_for_status()
            return url, r.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.info("router status %s unavailable: %s", url, exc)
            return url, None

    if not urls:
        return {}
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        got = await asyncio.gather(*(one(client, u) for u in urls))
    return {u: d for u, d in got if d is not None}


def _gpu_request(pod: dict[str, Any]) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or ():
        res = c.get("resources") or {}
        v = (res.get("limits") or {}).get(GPU_RESOURCE) or (res.get("requests") or {}).get(GPU_RESOURCE)
        total += int(v or 0)
    return total


def free_gpus(nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> int:
    """Allocatable GPUs over schedulable nodes minus what scheduled, live pods request."""
    alloc = 0
    for n in nodes:
        if (n.get("spec") or {}).get("unschedulable"):
            continue
        alloc += int(((n.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, 0) or 0)
    used = sum(
        _gpu_request(p)
        for p in pods
        if (p.get("spec") or {}).get("nodeName") and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )
    return max(0, alloc - used)


@dataclass
class TickOutcome:
    changed: dict[str, tuple[int, int]] = field(default_factory=dict)  # tier -> (before, after)
    events: list[str] = field(default_factory=list)
    promotions: list[Promotion] = field(default_factory=list)
    # pods relabelled (promoted) or deleted this tick: the reconcile after it must see
    # them in the watch cache, or it would size the Deployments from stale pods
    pods_changed: list[str] = field(default_factory=list)


async def autoscale_once(
    api: KubeClient,
    body: dict[str, Any],
    st: ServiceScaler,
    ms: ModelService,
    config: OperatorConfig,
    now_s: float | None = None,
    docs: dict[str, dict[str, Any]] | None = None,
    urls: list[str] | None = None,
    cluster: tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]] | None = None,
) -> TickOutcome:
    """One control step: observe, decide, mark victims, post Events. The caller reconciles
    when ``changed`` is not empty (st.desired holds the new counts). ``cluster``: (this
    service's pods, every pod that may hold GPUs, nodes) from the controller's caches;
    absent, they are listed."""
    now_s = time.monotonic() if now_s is None else now_s
    if docs is None:
        docs = await fetch_docs(urls if urls is not None else router_urls(config))
    names = [t.name for t in ms.spec.tiers]
    demand = tier_demands(docs, ms.spec.model.name, names, st.counters)
    if cluster is None:
        pods = await api.list("Pod", ms.namespace, f"{SERVICE_LABEL}={ms.name}")
        all_pods = await api.list("Pod")
        nodes = await api.list("Node")
    else:
        pods, all_pods, nodes = cluster
    model = ms.spec.model.name
    states = server_states(pods, router_load(docs, model), st.kv_capacity, router_bins(docs, model))
    if awake := awake_standbys(pods):
        async with httpx.AsyncClient(timeout=5.0) as engine_client:
            for sid in await sleep_standbys(api, awake, ms.spec, engine_client):
                log.info("standby %s loaded and put to sleep", sid)
    keep: dict[str, float] = {}
    warm: dict[str, int] = {}
    for t in st.scaler.tiers.values():
        serving = [s for s in states if s.tier == t.name and not s.draining and not s.standby]
        conc = float(sum(s.running for s in serving) + demand[t.name].waiting)
        st.prewarmer.observe(now_s, t.name, conc, demand[t.name].arrivals)
        p = st.prewarmer.decide(
            now_s, t.name, t.keep_alive_s, EXPECTED_START_S, t.target_per_server, len(serving), 0, 0
        )
        keep[t.name], warm[t.name] = p.keep_alive_s, p.warm_floor
    decision = st.scaler.decide(now_s, demand, states, free_gpus(nodes, all_pods), keep_alive_s=keep, warm_floor=warm)
    out = TickOutcome()
    by_id = {f"{(p.get('metadata') or {}).get('namespace')}/{(p.get('metadata') or {}).get('name')}": p for p in pods}
    involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": body["metadata"]}
    for d in decision.tiers:
        if d.promote:
            async with httpx.AsyncClient(timeout=5.0) as engine_client:
                for sid in d.promote:
                    pr = await promote(api, by_id[sid], ms.spec, owner_reference(ms), engine_client)
                    out.promotions.append(pr)
                    if pr.ok:
                        out.pods_changed.append(sid)
                        msg = (f"tier {d.tier}: standby {sid} promoted into serving in {pr.total_s:.2f} s "
                               f"(wake_up {pr.wake_s:.2f} s); the standby Deployment starts a replacement")  # fmt: skip
                        await _event(api, ms, involved, "Normal", "PromotedStandby", msg, out)
                    else:
                        # the serving Deployment covers the tier's count with a cold start
                        msg = f"tier {d.tier}: standby {sid} not promoted ({pr.error}); a new server starts instead"
                        await _event(api, ms, involved, "Warning", "PromotionFailed", msg, out)
        if d.concurrency > 0:
            log.info("%s/%s tier %s: concurrency %.0f, desired %d: %s", ms.namespace, ms.name, d.tier,
                      d.concurrency, d.desired, d.reason)  # fmt: skip
        before = st.desired.get(d.tier, d.current)
        for sid in d.drain:
            ns, _, pod = sid.partition("/")
            try:
                if sid in by_id and is_promoted(by_id[sid]):
                    # owned by no ReplicaSet: deleted here, drained like the others
                    await api.delete("Pod", ns, pod)
                    out.pods_changed.append(sid)
                else:
                    await api.patch("Pod", ns, pod, {"metadata": {"annotations": {DELETION_COST: "-1000"}}})
            except Exception as exc:
                log.warning("could not mark %s for scale-in: %s", sid, exc)
        if d.desired != before:
            st.desired[d.tier] = d.desired
            st.reasons[d.tier] = d.reason
            out.changed[d.tier] = (before, d.desired)
            reason = (
                "ScaledFromZero"
                if before == 0
                else "ScaledToZero"
                if d.desired == 0
                else "ScaledOut"
                if d.desired > before
                else "ScaledIn"
            )
            msg = f"tier {d.tier}: {before} -> {d.desired} serving replicas: {d.reason}"
            await _event(api, ms, involved, "Normal", reason, msg, out)
        st.desired.setdefault(d.tier, d.desired)
    return out


async def _event(
    api: KubeClient, ms: ModelService, involved: dict[str, Any], kind: str, reason: str, msg: str, out: TickOutcome
) -> None:
    try:
        await api.create("Event", ms.namespace, event_body(involved, kind, reason, msg, FIELD_MANAGER, _utc()))
        out.events.append(f"{reason}: {msg}")
    except Exception as exc:
        log.warning("event not posted: %s", exc)
    log.info("%s/%s %s", ms.namespace, ms.name, msg)


def _utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
