"""From cluster objects to the power policy's inputs and back (pure: no I/O).

A *server* here is a GPU node of the domain: the node agent reports per node and caps
every GPU of the node alike, and the controller writes one cap per node. A node takes
the tier of the engine pods scheduled on it; with several, the most protected one
(highest priority, then tightest TPOT) so a node is never capped for its least
important tenant. A GPU node without engine pods is its own group, capped first.

Placement (``oversubscriptionRatio``): a *placed server* is a GPU node with engine pods.
While the domain holds as many as it may (:func:`kubetier.policy.power.servers_allowed`,
judged on the measured p99 draw), its idle GPU nodes carry the NoSchedule taint
``kubetier.io/power-budget=<PowerBudget>``, so the scheduler places no further GPU
server there; when more are allowed, that many idle nodes are opened (name order), no
more, so a burst of pending replicas cannot overshoot. Running servers are never
evicted, and a node with engine pods is never tainted (a replacement pod of the same
server must be able to land).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubetier.api.node_power import (
    PLACEMENT_TAINT_KEY,
    POWER_CAP_ANNOTATION,
    POWER_REPORT_ANNOTATION,
    NodePowerReport,
)
from kubetier.api.powerbudget import NodeSelector, PowerBudgetSpec
from kubetier.operator.modelservice.model import GPU_RESOURCE, SERVICE_LABEL, TIER_LABEL
from kubetier.policy.power import PowerDecision, PowerPolicyConfig, ServerReading

IDLE_TIER = "(no engines)"
IDLE_PRIORITY = -1
IDLE_TPOT_MS = 1e9


def label_selector(sel: NodeSelector) -> str:
    """A metav1.LabelSelector as the ``labelSelector`` query string."""
    parts = [f"{k}={v}" for k, v in sorted(sel.match_labels.items())]
    for e in sel.match_expressions:
        if e.operator == "In":
            parts.append(f"{e.key} in ({','.join(e.values)})")
        elif e.operator == "NotIn":
            parts.append(f"{e.key} notin ({','.join(e.values)})")
        elif e.operator == "Exists":
            parts.append(e.key)
        else:
            parts.append(f"!{e.key}")
    return ",".join(parts)


def policy_config(spec: PowerBudgetSpec) -> PowerPolicyConfig:
    return PowerPolicyConfig(
        budget_watts=float(spec.budget_watts),
        cap_threshold=spec.cap_threshold_percent / 100.0,
        uncap_threshold=spec.uncap_threshold_percent / 100.0,
        hard_threshold=spec.hard_cap_threshold_percent / 100.0,
        cap_fraction=spec.cap_percent_of_max / 100.0,
        brake_fraction=spec.brake_percent_of_max / 100.0,
        stale_after_s=float(spec.stale_after_seconds),
        escalate_every_s=float(spec.escalate_after_seconds),
        lift_after_s=float(spec.lift_after_seconds),
        trend_lookahead_s=float(spec.trend_lookahead_seconds),
    )


def _gpus(node: Mapping[str, Any]) -> int:
    status = node.get("status") or {}
    raw = (status.get("allocatable") or {}).get(GPU_RESOURCE) or (status.get("capacity") or {}).get(GPU_RESOURCE)
    try:
        return int(raw or 0)
    except (TypeError, ValueError):
        return 0


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def parse_report(node: Mapping[str, Any]) -> tuple[NodePowerReport | None, str | None]:
    """The agent's report on ``node``, or why it is unusable."""
    raw = _annotations(node).get(POWER_REPORT_ANNOTATION)
    if raw is None:
        return None, None
    try:
        return NodePowerReport.model_validate_json(raw), None
    except ValidationError as exc:
        return None, f"{POWER_REPORT_ANNOTATION} unreadable: {exc.errors()[0].get('msg', exc)}"


@dataclass(frozen=True)
class DomainNode:
    name: str
    gpus: int
    tier: str
    priority: int
    tpot_ms: float
    engine_pods: int
    report: NodePowerReport | None
    problem: str | None
    current_cap: str | None  # the kubetier.io/power-cap annotation as it is now
    taints: tuple[dict[str, Any], ...] = ()
    resource_version: str | None = None

    @property
    def placed(self) -> bool:
        """A GPU server is placed here (engine pods scheduled on the node)."""
        return self.engine_pods > 0

    @property
    def closed(self) -> bool:
        return any(t.get("key") == PLACEMENT_TAINT_KEY for t in self.taints)

    def reading(self, gpu_max_watts: float) -> ServerReading:
        r = self.report
        fallback_max = self.gpus * gpu_max_watts
        max_watts = r.max_watts if r is not None and r.gpus else fallback_max
        return ServerReading(
            server=self.name,
            tier=self.tier,
            tier_priority=self.priority,
            tier_tpot_ms=self.tpot_ms,
            max_watts=max(max_watts, fallback_max),
            watts=r.watts if r is not None and r.gpus else None,
            measured_at=r.observed_at if r is not None and r.gpus else None,
            cap_watts=None,
        )


TierKey = tuple[str, str]  # (namespace, ModelService name)


def tiers_of(modelservices: Iterable[Mapping[str, Any]]) -> dict[TierKey, dict[str, tuple[int, float]]]:
    """(namespace, service) -> tier -> (priority, TPOT ms), from ModelService specs."""
    out: dict[TierKey, dict[str, tuple[int, float]]] = {}
    for ms in modelservices:
        meta = ms.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        tiers = {}
        for t in (ms.get("spec") or {}).get("tiers") or []:
            try:
                tiers[str(t["name"])] = (int(t.get("priority", 0)), float(t["tpotMs"]))
            except (KeyError, TypeError, ValueError):
                continue
        out[key] = tiers
    return out


def domain_nodes(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    tiers: Mapping[TierKey, Mapping[str, tuple[int, float]]],
) -> list[DomainNode]:
    """The GPU nodes of the domain, each with its tier and its agent's report."""
    by_node: dict[str, list[tuple[int, float, str]]] = {}
    for pod in pods:
        spec = pod.get("spec") or {}
        node_name = spec.get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node_name or phase in ("Succeeded", "Failed"):
            continue
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        service, tier = labels.get(SERVICE_LABEL), labels.get(TIER_LABEL)
        if not service or not tier:
            continue
        prio, tpot = tiers.get((meta.get("namespace") or "", service), {}).get(tier, (0, math.inf))
        by_node.setdefault(node_name, []).append((prio, tpot, tier))
    out = []
    for node in nodes:
        gpus = _gpus(node)
        if gpus <= 0:
            continue
        name = (node.get("metadata") or {}).get("name") or ""
        tenants = by_node.get(name, [])
        if tenants:
            prio, tpot, tier = max(tenants, key=lambda x: (x[0], -x[1]))
        else:
            prio, tpot, tier = IDLE_PRIORITY, IDLE_TPOT_MS, IDLE_TIER
        report, problem = parse_report(node)
        out.append(
            DomainNode(
                name=name,
                gpus=gpus,
                tier=tier,
                priority=prio,
                tpot_ms=tpot if math.isfinite(tpot) else IDLE_TPOT_MS,
                engine_pods=len(tenants),
                report=report,
                problem=problem,
                current_cap=_annotations(node).get(POWER_CAP_ANNOTATION),
                taints=tuple((node.get("spec") or {}).get("taints") or ()),
                resource_version=(node.get("metadata") or {}).get("resourceVersion"),
            )
        )
    return sorted(out, key=lambda n: n.name)


def cap_annotation(node: DomainNode, node_cap_watts: float | None) -> str | None:
    """The per-GPU cap annotation value for a node cap (None: no annotation, uncapped)."""
    if node_cap_watts is None:
        return None
    return str(int(node_cap_watts / max(1, node.gpus)))


def cap_patches(nodes: Iterable[DomainNode], decision: PowerDecision) -> dict[str, str | None]:
    """Node -> new annotation value (None removes it), for the nodes whose cap changes."""
    out: dict[str, str | None] = {}
    for n in nodes:
        want = cap_annotation(n, decision.caps.get(n.name))
        have = n.current_cap if n.current_cap not in ("", "none") else None
        if want != have:
            out[n.name] = want
    return out


def capped_summary(nodes: Iterable[DomainNode], decision: PowerDecision) -> tuple[dict[str, int], str]:
    total: dict[str, int] = {}
    capped: dict[str, int] = {}
    order: dict[str, tuple[int, float]] = {}
    for n in nodes:
        total[n.tier] = total.get(n.tier, 0) + 1
        order[n.tier] = (n.priority, n.tpot_ms)
        if decision.caps.get(n.name) is not None:
            capped[n.tier] = capped.get(n.tier, 0) + 1
    tiers = sorted(total, key=lambda t: order[t])
    summary = ", ".join(f"{t} {capped.get(t, 0)}/{total[t]}" for t in tiers)
    return {t: capped.get(t, 0) for t in tiers}, summary


def nodes_to_close(nodes: Iterable[DomainNode], allowed: int) -> set[str]:
    """The idle GPU nodes to close to new GPU servers: all idle ones beyond the
    ``allowed - placed`` that may still take one (kept open in name order, so the open
    ones stay the same tick after tick)."""
    nodes = list(nodes)
    placed = sum(1 for n in nodes if n.placed)
    idle = sorted(n.name for n in nodes if not n.placed)
    room = max(0, allowed - placed)
    return set(idle[room:])


def taint_patches(nodes: Iterable[DomainNode], close: set[str], budget_name: str) -> dict[str, dict[str, Any]]:
    """Node -> merge patch of ``spec.taints`` for the nodes whose placement taint changes.

    The whole list is written (a merge patch replaces lists) with the node's
    resourceVersion, so a taint another controller added in between is never lost: the
    write fails with a conflict and the next tick tries again.
    """
    out: dict[str, dict[str, Any]] = {}
    for n in nodes:
        want = n.name in close
        if want == n.closed:
            continue
        kept = [t for t in n.taints if t.get("key") != PLACEMENT_TAINT_KEY]
        if want:
            kept.append({"key": PLACEMENT_TAINT_KEY, "value": budget_name, "effect": "NoSchedule"})
        meta: dict[str, Any] = {"resourceVersion": n.resource_version} if n.resource_version else {}
        out[n.name] = {"metadata": meta, "spec": {"taints": kept}}
    return out


def held_pods(pods: Iterable[Mapping[str, Any]], budget_name: str, closing: bool) -> list[str]:
    """Engine pods (namespace/name) left Pending by an untolerated taint while this
    domain keeps idle nodes closed. kube-scheduler 1.34 says "had untolerated taint(s)"
    without naming the taint (older versions name it; then it must be this budget's), so
    a pod held by some other taint while this domain is full may be counted too."""
    if not closing:
        return []
    out = []
    for pod in pods:
        if (pod.get("spec") or {}).get("nodeName"):
            continue
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                message = str(c.get("message") or "")
                named = PLACEMENT_TAINT_KEY in message and budget_name in message
                if named or ("untolerated taint" in message and "{" not in message):
                    meta = pod.get("metadata") or {}
                    out.append(f"{meta.get('namespace')}/{meta.get('name')}")
    return sorted(out)
