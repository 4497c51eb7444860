"""Standby servers: put to sleep once loaded, promoted into their tier's bin on demand.

A tier with ``prewarm.standby: N`` runs the Deployment ``<ms>-<tier>-standby`` (role
``standby``, pool ``standby``): engines started with sleep mode (vLLM
``--enable-sleep-mode``; the engine simulator the same flag) that the router does not
route to (it routes only ``kubetier.io/role=serving``).

1. **Sleep.** Once a standby's engine answers ``/health`` (model loaded), the operator
   ``POST /sleep?level=1`` (vLLM offloads the weights to host memory and frees the KV
   cache) and annotates the pod ``kubetier.io/standby-asleep``. Only such pods are
   promotable: under KWOK a pod is Ready before its engine has loaded, and a real
   cluster's readiness probe says nothing about sleep.
2. **Promotion** (the autoscaler chose to grow the tier and a promotable standby
   exists): ``POST /wake_up`` (answers once awake: vLLM 0.3-6 s), then one patch of the
   pod: role ``serving``, pool ``promoted``, and the ModelService as its controlling
   owner. The new labels no longer match the standby ReplicaSet's selector, so that
   ReplicaSet lets the pod go and starts a replacement standby behind it (the
   Deployment's replica count is unchanged); the router's pod watch sees a Ready
   serving pod and routes to it. No restart, no new scheduling.
3. **Counting.** A promoted pod belongs to no Deployment: the tier's serving Deployment
   runs ``desired - promoted`` replicas (``promoted_serving`` below, used by
   ``desired.py``), so the tier holds ``desired`` serving pods in all. A promoted pod
   chosen for scale-in is deleted by the operator directly (a ReplicaSet's
   pod-deletion-cost does not reach it); it drains like any other (the router stops on
   its ``deletionTimestamp``, preStop and the grace period let streams finish). A
   rollout does not replace promoted pods: they go on scale-in.

RBAC: pods ``patch`` and ``delete`` (the operator's ClusterRole has both).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from kubetier.api.labels import (
    LOCAL_ENDPOINT_ANNOTATION,
    ROLE_LABEL,
    ROLE_STANDBY,
)
from kubetier.api.modelservice import ModelServiceSpec
from kubetier.kube import KubeClient
from kubetier.operator.modelservice.autoscale_standby_spec import (
    ASLEEP_ANNOTATION,
    pod_labels,
    pod_live,
    pod_meta,
    promotion_patch,
    sleep_mode_supported,
)

log = logging.getLogger("kubetier.operator.autoscaler")

WAKE_TIMEOUT_S = 120.0  # vLLM level-1 wake of a large model: seconds; a level-2 one reloads


def engine_url(pod: dict[str, Any], port: int) -> str | None:
    """The engine's base URL: the local endpoint (KWOK development) or the pod IP."""
    local = (pod_meta(pod).get("annotations") or {}).get(LOCAL_ENDPOINT_ANNOTATION)
    if local:
        return f"http://{local}"
    ip = (pod.get("status") or {}).get("podIP")
    return f"http://{ip}:{port}" if ip else None


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or ()
    )


def awake_standbys(pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ready standby pods not yet put to sleep (most ticks: none, and no HTTP client)."""
    return [
        p
        for p in pods
        if pod_labels(p).get(ROLE_LABEL) == ROLE_STANDBY
        and pod_live(p)
        and _ready(p)
        and not (pod_meta(p).get("annotations") or {}).get(ASLEEP_ANNOTATION)
    ]


async def sleep_standbys(
    api: KubeClient, pods: Iterable[dict[str, Any]], spec: ModelServiceSpec, client: httpx.AsyncClient
) -> list[str]:
    """Put every loaded, not yet annotated standby engine to sleep; the pods annotated."""
    done = []
    for pod in awake_standbys(pods):
        meta = pod_meta(pod)
        base = engine_url(pod, spec.engine.port)
        if base is None:
            continue
        try:
            health = await client.get(f"{base}/health")
            if health.status_code != 200:
                continue  # still loading its model
            state = "awake"
            if sleep_mode_supported(spec):
                r = await client.post(f"{base}/sleep", params={"level": "1"})
                if r.status_code != 200:
                    log.info(
                        "standby %s/%s: /sleep answered %d", meta.get("namespace"), meta.get("name"), r.status_code
                    )
                    continue
                state = "level1"
            await api.patch(
                "Pod", meta.get("namespace"), meta["name"], {"metadata": {"annotations": {ASLEEP_ANNOTATION: state}}}
            )
            done.append(f"{meta.get('namespace')}/{meta['name']}")
        except httpx.HTTPError as exc:
            log.info("standby %s/%s not put to sleep yet: %s", meta.get("namespace"), meta.get("name"), exc)
    return done


@dataclass(frozen=True)
class Promotion:
    server_id: str
    wake_s: float  # /wake_up until it answered (engine awake)
    total_s: float  # decision to relabelled pod
    ok: bool
    error: str = ""


async def promote(
    api: KubeClient,
    pod: dict[str, Any],
    spec: ModelServiceSpec,
    owner: dict[str, Any],
    client: httpx.AsyncClient,
) -> Promotion:
    """Wake the standby's engine, then relabel it into its tier's bin."""
    meta = pod_meta(pod)
    sid = f"{meta.get('namespace')}/{meta.get('name')}"
    t0 = time.monotonic()
    wake_s = 0.0
    try:
        base = engine_url(pod, spec.engine.port)
        if base is None:
            return Promotion(sid, 0.0, 0.0, False, "no engine address")
        if sleep_mode_supported(spec):
            r = await client.post(f"{base}/wake_up", timeout=WAKE_TIMEOUT_S)
            wake_s = time.monotonic() - t0
            if r.status_code != 200:
                return Promotion(sid, wake_s, time.monotonic() - t0, False, f"/wake_up answered {r.status_code}")
        await api.patch("Pod", meta.get("namespace"), meta["name"], promotion_patch(owner, dt.datetime.now(dt.UTC)))
    except httpx.HTTPError as exc:
        return Promotion(sid, wake_s, time.monotonic() - t0, False, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # the API write failed: the standby stays a standby
        return Promotion(sid, wake_s, time.monotonic() - t0, False, str(exc))
    return Promotion(sid, wake_s, time.monotonic() - t0, True)
