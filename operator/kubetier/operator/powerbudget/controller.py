"""One control tick of one PowerBudget: read the domain, decide, write caps, status, Events.

Per tick (``CONTROL_INTERVAL_S``): list the domain's nodes (its selector), the engine pods
and the ModelServices (tier priority and TPOT); feed the agents' reports to
:func:`kubetier.policy.power.decide`; write each node whose cap changes
(``kubetier.io/power-cap``, which its agent applies); patch ``status``; post an Event on
every level change and when telemetry goes missing or comes back. The policy state
(capped groups, hold timers) lives in memory per PowerBudget; the counters in status
(time above thresholds, brake events) survive a restart because each tick continues
from the status it finds.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from kubetier.api.node_power import PLACEMENT_TAINT_KEY, POWER_CAP_ANNOTATION
from kubetier.api.powerbudget import PowerBudget
from kubetier.kube import KubeClient, KubeError
from kubetier.kube.events import event_body
from kubetier.operator.modelservice.model import SERVICE_LABEL
from kubetier.operator.powerbudget import domain
from kubetier.policy.power import (
    PowerDecision,
    PowerPolicyConfig,
    PowerState,
    PowerWindow,
    ServerReading,
    ThresholdClock,
    cap_order,
    decide,
    group_key,
    servers_allowed,
)

log = logging.getLogger("kubetier.operator.powerbudget")

COMPONENT = "kubetier-powerbudget"
LEVELS = {"normal": "Normal", "capping": "Capping", "braking": "Braking"}


@dataclass
class DomainMemory:
    """What one PowerBudget's controller remembers between ticks (in memory)."""

    state: PowerState = field(default_factory=PowerState)
    clock: ThresholdClock = field(default_factory=ThresholdClock)
    window: PowerWindow | None = None
    level: str | None = None
    stale: frozenset[str] = frozenset()
    restored: bool = False
    restore_groups: bool = False  # first tick after a restart while caps were on
    carried: dict[str, float] = field(default_factory=dict)  # counters found in status at start
    closed: frozenset[str] = frozenset()  # idle nodes closed to new GPU servers (placement taint)
    held: frozenset[str] = frozenset()  # engine pods the placement taint kept from scheduling


@dataclass(frozen=True)
class TickResult:
    decision: PowerDecision
    patched: dict[str, str | None]
    status: dict[str, Any]
    events: list[tuple[str, str, str]]


async def tick(
    api: KubeClient,
    body: dict[str, Any],
    memory: DomainMemory,
    clock: Callable[[], float] = time.time,
) -> TickResult:
    pb = PowerBudget.model_validate(body)
    spec = pb.spec
    now = clock()
    config = domain.policy_config(spec)
    if memory.window is None or memory.window.window_s != spec.window_seconds:
        memory.window = PowerWindow(float(spec.window_seconds))
    if not memory.restored:
        st = body.get("status") or {}
        memory.carried = {
            "cap": float(st.get("secondsAboveCap") or 0.0),
            "hard": float(st.get("secondsAboveHardCap") or 0.0),
            "budget": float(st.get("secondsAboveBudget") or 0.0),
        }
        memory.level = {"Normal": "normal", "Capping": "capping", "Braking": "braking"}.get(st.get("level") or "")
        memory.state = PowerState(
            brake_events=int(st.get("brakeEvents") or 0),
            braking=memory.level == "braking",
            changed_at=now if memory.level in ("capping", "braking") else None,
        )
        memory.restore_groups = memory.level in ("capping", "braking")
        memory.restored = True

    nodes = await api.list("Node", None, domain.label_selector(spec.node_selector) or None)
    pods = await api.list("Pod", None, SERVICE_LABEL)
    services = await api.list("ModelService", None)
    dnodes = domain.domain_nodes(nodes, pods, domain.tiers_of(services))
    readings = [n.reading(float(spec.gpu_max_watts)) for n in dnodes]
    if memory.restore_groups:
        # After a restart the caps on the nodes say how many groups were capped: the
        # leading groups (in cap order) whose nodes all carry a cap annotation.
        capped_now = {n.name for n in dnodes if n.current_cap not in (None, "", "none")}
        groups = cap_order(readings)
        n_capped = 0
        for g in groups:
            members = [r.server for r in readings if group_key(r) == g]
            if not all(m in capped_now for m in members):
                break
            n_capped += 1
        memory.state = replace(memory.state, capped_groups=n_capped)
        memory.restore_groups = False
    decision = domain_decide(readings, memory, config, now)

    patched = domain.cap_patches(dnodes, decision)
    for name, value in patched.items():
        await api.patch("Node", None, name, {"metadata": {"annotations": {POWER_CAP_ANNOTATION: value}}})

    memory.clock.observe(now, decision.domain_watts, config)
    if not decision.stale:
        # The oversubscription judgement rests on *measured* draw: a tick with a node
        # counted at its maximum (fail-safe) is left out of the p99 window.
        memory.window.add(now, decision.domain_watts)
    p99 = memory.window.percentile(0.99)
    by_tier, summary = domain.capped_summary(dnodes, decision)
    capped_nodes = {n.name for n in dnodes if decision.caps.get(n.name) is not None}
    capped_pods = sum(n.engine_pods for n in dnodes if n.name in capped_nodes)
    placed = sum(1 for n in dnodes if n.placed)
    allowed = servers_allowed(
        float(spec.budget_watts),
        float(spec.gpu_max_watts) * max(1, max((n.gpus for n in dnodes), default=1)),
        spec.oversubscription_ratio,
        placed,
        p99,
        config.cap_threshold,
    )
    # Placement: idle GPU nodes closed (NoSchedule taint) while the domain holds what it may.
    close = domain.nodes_to_close(dnodes, allowed)
    for name, taint_patch in domain.taint_patches(dnodes, close, pb.metadata["name"]).items():
        try:
            await api.patch("Node", None, name, taint_patch)
        except KubeError as exc:
            if exc.status != 409:
                raise
            log.info("node %s changed while its placement taint was written; next tick", name)
    held = domain.held_pods(pods, pb.metadata["name"], bool(close))
    p99_text = "unknown (no measurement without stale nodes yet)" if p99 is None else f"{p99:.0f} W"
    placement = (
        f"{placed} GPU servers placed, {allowed} allowed (oversubscriptionRatio {spec.oversubscription_ratio:g} x "
        f"budget/TDP, judged on the measured p99 draw {p99_text})"
    )
    level = LEVELS[decision.level]
    stale = frozenset(decision.stale)
    problems = [f"{n.name}: {n.problem}" for n in dnodes if n.problem]
    problems += [f"{n.name}: agent error: {n.report.error}" for n in dnodes if n.report is not None and n.report.error]
    now_iso = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    old_conditions = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}

    def condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        status = "True" if ok else "False"
        prev = old_conditions.get(type_) or {}
        since = prev.get("lastTransitionTime") if prev.get("status") == status else now_iso
        return {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message[:1000],
            "lastTransitionTime": since or now_iso,
            "observedGeneration": int((body.get("metadata") or {}).get("generation") or 0),
        }

    conditions = [
        condition(
            "TelemetryFresh",
            not stale and not problems,
            "AllNodesReporting" if not stale and not problems else "TelemetryMissing",
            "every GPU node's agent reported within staleAfterSeconds"
            if not stale and not problems
            else "counted at their maximum draw: "
            + ", ".join(sorted(stale))
            + ("; " if problems else "")
            + "; ".join(problems),
        ),
        condition("Capping", decision.level != "normal", level, decision.reason),
        condition(
            "Oversubscribed",
            placed > allowed,
            "AboveAllowed" if placed > allowed else "WithinAllowed",
            placement + ("; running servers are never evicted" if placed > allowed else ""),
        ),
        condition(
            "PlacementHeld",
            bool(close),
            "DomainFull" if close else "RoomForServers",
            (
                f"{placement}: idle GPU nodes closed to new GPU servers (taint {PLACEMENT_TAINT_KEY}="
                f"{pb.metadata['name']}:NoSchedule): {', '.join(sorted(close))}"
                + (f"; replicas held back: {', '.join(held)}" if held else "")
            )
            if close
            else f"{placement}: new GPU servers may be placed",
        ),
    ]
    status = {
        "observedGeneration": int((body.get("metadata") or {}).get("generation") or 0),
        "conditions": conditions,
        "nodes": len(nodes),
        "servers": placed,
        "serversAllowed": allowed,
        "closedNodes": sorted(close),
        "heldPods": held,
        "budgetWatts": spec.budget_watts,
        "drawnWatts": round(decision.domain_watts, 1),
        "p99Watts": None if p99 is None else round(p99, 1),
        "percentOfBudget": round(100.0 * decision.domain_watts / spec.budget_watts, 1),
        "level": level,
        "cappedNodes": len(capped_nodes),
        "cappedPods": capped_pods,
        "cappedByTier": by_tier,
        "cappedSummary": summary or "none",
        "staleNodes": sorted(stale),
        "secondsAboveCap": round(memory.carried.get("cap", 0.0) + memory.clock.above_cap_s, 1),
        "secondsAboveHardCap": round(memory.carried.get("hard", 0.0) + memory.clock.above_hard_s, 1),
        "secondsAboveBudget": round(memory.carried.get("budget", 0.0) + memory.clock.above_budget_s, 1),
        "brakeEvents": decision.state.brake_events,
        "lastDecision": decision.reason[:1000],
    }
    await api.patch_status("PowerBudget", None, pb.metadata["name"], status)

    events: list[tuple[str, str, str]] = []
    prev_level = memory.level
    if prev_level is not None and decision.level != prev_level:
        kind = "Warning" if decision.level == "braking" else "Normal"
        reason = {"normal": "CapsLifted", "capping": "CapsApplied", "braking": "Brake"}[decision.level]
        events.append((kind, reason, f"{decision.reason}; capped: {summary or 'none'}"))
    elif prev_level == decision.level == "capping" and patched:
        events.append(("Normal", "CapsChanged", f"{decision.reason}; capped: {summary}"))
    if stale - memory.stale:
        events.append(
            (
                "Warning",
                "TelemetryMissing",
                "no fresh report from " + ", ".join(sorted(stale - memory.stale)) + ": counted at their maximum draw",
            )
        )
    if close and not memory.closed:
        events.append(("Normal", "PlacementHeld", f"{placement}: idle GPU nodes closed: {', '.join(sorted(close))}"))
    elif memory.closed and not close:
        events.append(("Normal", "PlacementOpened", f"{placement}: new GPU servers may be placed"))
    if memory.stale - stale:
        events.append(("Normal", "TelemetryRestored", "reporting again: " + ", ".join(sorted(memory.stale - stale))))
    for kind, reason, message in events:
        await api.create(
            "Event", "default", event_body(body, kind, reason, message, COMPONENT, dt.datetime.now(dt.UTC))
        )
    by_id = {f"{(p.get('metadata') or {}).get('namespace')}/{(p.get('metadata') or {}).get('name')}": p for p in pods}
    for pod_id in sorted(set(held) - memory.held):
        # On the pod too: `kubectl describe pod` says why the replica is Pending.
        await api.create(
            "Event",
            pod_id.split("/")[0],
            event_body(
                by_id[pod_id],
                "Warning",
                "HeldByPowerBudget",
                f"PowerBudget {pb.metadata['name']}: {placement}; this replica waits until the domain may host "
                "another GPU server",
                COMPONENT,
                dt.datetime.now(dt.UTC),
            ),
        )
    memory.level = decision.level
    memory.stale = stale
    memory.closed = frozenset(close)
    memory.held = frozenset(held)
    return TickResult(decision, patched, status, events)


def domain_decide(
    readings: list[ServerReading], memory: DomainMemory, config: PowerPolicyConfig, now: float
) -> PowerDecision:
    d = decide(readings, memory.state, config, now)
    memory.state = d.state
    return d


async def lift_all(api: KubeClient, body: dict[str, Any]) -> list[str]:
    """Remove this domain's caps and placement taints (the PowerBudget is being deleted)."""
    pb = PowerBudget.model_validate(body)
    nodes = await api.list("Node", None, domain.label_selector(pb.spec.node_selector) or None)
    lifted = []
    for node in nodes:
        ann = (node.get("metadata") or {}).get("annotations") or {}
        name = node["metadata"]["name"]
        if POWER_CAP_ANNOTATION in ann:
            await api.patch("Node", None, name, {"metadata": {"annotations": {POWER_CAP_ANNOTATION: None}}})
            lifted.append(name)
        taints = (node.get("spec") or {}).get("taints") or []
        if any(t.get("key") == PLACEMENT_TAINT_KEY for t in taints):
            kept = [t for t in taints if t.get("key") != PLACEMENT_TAINT_KEY]
            meta = {"resourceVersion": node["metadata"].get("resourceVersion")}
            await api.patch("Node", None, name, {"metadata": meta, "spec": {"taints": kept}})
            if name not in lifted:
                lifted.append(name)
    return lifted
