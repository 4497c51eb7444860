"""Spot capacity, as pure decisions shared by the operator and the fleet simulator.

Four questions, one function each:

- *Which nodes are spot?* Every platform marks capacity type with its own node label
  (:data:`CAPACITY_SCHEMES`). On-demand placement is written as "not a spot value"
  (``NotIn``), which also matches nodes that carry no such label at all, so a cluster
  without Karpenter (or any spot tooling) schedules on-demand tiers instead of leaving them
  Pending.
- *Is a node about to go?* :func:`notice_from_node` reads the signals the cloud tooling
  leaves on the Node (Karpenter's disruption taint, AWS Node Termination Handler's taints,
  GKE's impending-termination taint, and the deadline the kubetier node agent writes after
  polling the cloud metadata endpoint); the ``parse_*`` functions read those endpoints'
  bodies. Published notice windows: AWS 2 minutes, GCP 30 s, Azure scheduled events about
  30 s; Karpenter's taint comes with the node's termination grace period. The window is a
  parameter everywhere (:class:`NoticeWindows`).
- *What happens to the streams on that node?* :func:`plan_drain`: a stream that finishes
  before the deadline (minus a safety margin) finishes where it is; every other stream is
  migrated at once at token level (prompt plus the tokens already generated, resubmitted as
  token ids), while the most slack is left. New requests still go to the noticed server
  while they are predicted to finish in time (:func:`admit_until`,
  :func:`finishes_before_deadline`: deadline-aware draining).
- *Where does the replacement go?* :func:`plan_capacity`: spot first in a zone that was not
  just preempted; on-demand fallback when spot capacity is not obtained within a bound;
  back to spot once spot has been steady for a while (SkyServe's fallback and return), plus
  optional over-provisioning on spot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from kubetier.api import labels

CapacityType = Literal["spot", "on-demand"]


# --------------------------------------------------------------------------- capacity type


@dataclass(frozen=True)
class CapacityScheme:
    """How one platform labels spot capacity on its nodes."""

    name: str
    label: str
    spot_values: tuple[str, ...]
    # The zone label nodes carry: every managed Kubernetes of the four presets sets the
    # well-known topology.kubernetes.io/zone; a custom scheme may name another.
    zone_label: str = labels.ZONE_LABEL

    def capacity_type(self, node_labels: Mapping[str, str]) -> CapacityType:
        return "spot" if node_labels.get(self.label) in self.spot_values else "on-demand"

    def on_demand_requirement(self) -> dict[str, object]:
        """Node selector requirement for on-demand nodes. ``NotIn`` also matches nodes
        without the label, so clusters with no spot tooling still schedule."""
        return {"key": self.label, "operator": "NotIn", "values": list(self.spot_values)}

    def spot_requirement(self) -> dict[str, object]:
        return {"key": self.label, "operator": "In", "values": list(self.spot_values)}

    def spot_toleration(self) -> dict[str, str]:
        """Tolerate the taint some clusters put on spot nodes (label key, first spot value)."""
        return {"key": self.label, "operator": "Equal", "value": self.spot_values[0], "effect": "NoSchedule"}


# Sources: Karpenter NodePool docs (karpenter.sh/capacity-type: spot | on-demand | reserved);
# EKS managed node groups (eks.amazonaws.com/capacityType: SPOT | ON_DEMAND); GKE Spot VMs
# (cloud.google.com/gke-spot: "true"; legacy preemptible VMs cloud.google.com/gke-preemptible);
# AKS spot node pools (kubernetes.azure.com/scalesetpriority: spot).
CAPACITY_SCHEMES: dict[str, CapacityScheme] = {
    "karpenter": CapacityScheme("karpenter", labels.CAPACITY_TYPE_LABEL, (labels.CAPACITY_SPOT,)),
    "eks": CapacityScheme("eks", labels.EKS_CAPACITY_TYPE_LABEL, ("SPOT",)),
    "gke": CapacityScheme("gke", labels.GKE_SPOT_LABEL, ("true",)),
    "gke-preemptible": CapacityScheme("gke-preemptible", labels.GKE_PREEMPTIBLE_LABEL, ("true",)),
    "aks": CapacityScheme("aks", labels.AKS_PRIORITY_LABEL, ("spot",)),
}
DEFAULT_SCHEME = "karpenter"


def capacity_scheme(
    name: str, label: str | None = None, spot_value: str | None = None, zone_label: str | None = None
) -> CapacityScheme:
    """A preset by name, or a custom scheme when ``label`` is given (``spot_value`` defaults
    to "spot"); ``zone_label`` overrides the zone label either way."""
    if label:
        scheme = CapacityScheme("custom", label, (spot_value or "spot",))
    else:
        try:
            scheme = CAPACITY_SCHEMES[name]
        except KeyError:
            known = ", ".join(sorted(CAPACITY_SCHEMES))
            raise ValueError(f"unknown capacity scheme {name!r} (known: {known}, or give a label)") from None
    return replace(scheme, zone_label=zone_label) if zone_label else scheme


# --------------------------------------------------------------------------- preemption notices


@dataclass(frozen=True)
class NoticeWindows:
    """Seconds between a notice and the node's disappearance, per source (parameters)."""

    aws: float = 120.0
    gcp: float = 30.0
    azure: float = 30.0
    karpenter: float = 30.0  # the NodePool's terminationGracePeriod decides; 30 s is conservative

    def for_source(self, source: str) -> float:
        if source.startswith("aws"):
            return self.aws
        if source.startswith("gke") or source.startswith("gcp"):
            return self.gcp
        if source.startswith("azure"):
            return self.azure
        return self.karpenter


@dataclass(frozen=True)
class PreemptionNotice:
    node: str
    source: str
    received_at: float
    deadline: float  # when the node is expected to be gone (seconds, same clock as received_at)

    def seconds_left(self, now: float) -> float:
        return max(0.0, self.deadline - now)


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str = "NoSchedule"
    value: str = ""


# Taints that mean "this node is about to go": (key, source). AWS Node Termination Handler
# taints only when run with TAINT_NODE=true; rebalance recommendations are an early warning,
# treated as a notice because they usually precede the 2-minute interruption by 10-20 minutes.
NOTICE_TAINTS: dict[str, str] = {
    labels.KARPENTER_DISRUPTED_TAINT: "karpenter",
    labels.KARPENTER_DISRUPTION_TAINT: "karpenter",
    labels.NTH_SPOT_INTERRUPTION_TAINT: "aws-nth",
    labels.NTH_REBALANCE_TAINT: "aws-nth-rebalance",
    labels.NTH_ASG_TERMINATION_TAINT: "aws-nth",
    labels.NTH_MAINTENANCE_TAINT: "aws-nth",
    labels.GKE_TERMINATION_TAINT: "gke",
}
# Written by `kubetier agent` from the cloud metadata endpoint: the deadline (RFC 3339) and
# the source (aws | gcp | azure).
DEADLINE_ANNOTATION = labels.PREEMPTION_DEADLINE_ANNOTATION
SOURCE_ANNOTATION = labels.PREEMPTION_SOURCE_ANNOTATION


def notice_from_node(
    node: str,
    taints: Sequence[Taint],
    annotations: Mapping[str, str],
    now: float,
    windows: NoticeWindows = NoticeWindows(),
) -> PreemptionNotice | None:
    """The earliest-deadline notice a Node carries, or None.

    ``now`` is when the notice was seen (epoch seconds): a taint carries no time of its
    own, so its deadline is ``now`` plus the source's window.
    """
    found: list[PreemptionNotice] = []
    deadline_text = annotations.get(DEADLINE_ANNOTATION)
    if deadline_text:
        deadline = _parse_rfc3339(deadline_text)
        if deadline is not None:
            found.append(PreemptionNotice(node, annotations.get(SOURCE_ANNOTATION, "agent"), now, deadline))
    for taint in taints:
        source = NOTICE_TAINTS.get(taint.key)
        if source is None:
            continue
        if taint.key == labels.KARPENTER_DISRUPTION_TAINT and taint.value != "disrupting":
            continue
        found.append(PreemptionNotice(node, source, now, now + windows.for_source(source)))
    return min(found, key=lambda n: n.deadline) if found else None


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_rfc3339(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def parse_aws_instance_action(body: str, now: float, windows: NoticeWindows = NoticeWindows()) -> float | None:
    """AWS ``/latest/meta-data/spot/instance-action`` (404 when none; the caller passes the
    200 body): ``{"action": "terminate"|"stop"|"hibernate", "time": "2026-...Z"}``. Returns
    the deadline, or None when the body is not a notice."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("action") not in ("terminate", "stop", "hibernate"):
        return None
    deadline = _parse_rfc3339(str(doc.get("time", "")))
    return deadline if deadline is not None else now + windows.aws


def parse_gcp_preempted(body: str, now: float, windows: NoticeWindows = NoticeWindows()) -> float | None:
    """GCP ``/computeMetadata/v1/instance/preempted``: ``TRUE`` once the VM is being preempted."""
    return now + windows.gcp if body.strip().upper() == "TRUE" else None


def parse_azure_scheduled_events(
    body: str, vm_name: str, now: float, windows: NoticeWindows = NoticeWindows()
) -> float | None:
    """Azure ``/metadata/scheduledevents``: a ``Preempt`` (or ``Terminate``) event naming this
    VM in ``Resources``; ``NotBefore`` (RFC 1123) is the deadline when present."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    events = doc.get("Events") if isinstance(doc, dict) else None
    best: float | None = None
    for ev in events if isinstance(events, list) else []:
        if not isinstance(ev, dict) or ev.get("EventType") not in ("Preempt", "Terminate"):
            continue
        resources = ev.get("Resources") or []
        if vm_name and isinstance(resources, list) and vm_name not in resources:
            continue
        deadline = now + windows.azure
        not_before = ev.get("NotBefore")
        if isinstance(not_before, str) and not_before:
            try:
                deadline = parsedate_to_datetime(not_before).timestamp()
            except (TypeError, ValueError):
                pass
        best = deadline if best is None else min(best, deadline)
    return best


# --------------------------------------------------------------------------- draining a noticed server


@dataclass(frozen=True)
class StreamView:
    """One in-flight request on a server under notice."""

    request_id: str
    tokens_left: int  # output tokens still to generate (max_tokens minus generated)
    tpot_s: float  # the server's current per-token time


@dataclass(frozen=True)
class DrainStep:
    request_id: str
    action: Literal["finish", "migrate"]


def plan_drain(streams: Sequence[StreamView], now: float, deadline: float, margin_s: float = 5.0) -> list[DrainStep]:
    """Finish what ends in time, migrate the rest now.

    Migrating at once (rather than at the last moment) leaves the target server the most
    time to re-prefill the prompt plus the generated tokens, and frees the doomed server's
    batch so the streams that stay finish sooner.
    """
    budget = deadline - margin_s - now
    return [
        DrainStep(s.request_id, "finish" if s.tokens_left * s.tpot_s <= budget else "migrate")
        for s in sorted(streams, key=lambda s: s.request_id)
    ]


def predicted_request_s(ttft_s: float, tpot_s: float, output_tokens: float) -> float:
    """How long a request is predicted to occupy a server: its first token plus one
    inter-token time per further token (the router's own TTFT/TPOT prediction)."""
    return max(0.0, ttft_s) + max(0.0, tpot_s) * max(0.0, output_tokens - 1)


# A "long" request of a tier for deadline-aware admission: twice its mean output (outputs
# vary; a request that runs longer than predicted is migrated like any other stream).
LONG_REQUEST_OUTPUT_FACTOR = 2.0


def tier_long_request_s(ttft_ms: float, tpot_ms: float, mean_output_tokens: float) -> float:
    """How long a long request of a tier takes at its TTFT and TPOT targets."""
    return predicted_request_s(ttft_ms / 1000.0, tpot_ms / 1000.0, LONG_REQUEST_OUTPUT_FACTOR * mean_output_tokens)


def longest_request_s(tiers: Sequence[tuple[float, float, float]], own_tpot_s: float) -> float:
    """The longest request a server of a tier whose TPOT target is ``own_tpot_s`` may be
    given: requests of looser tiers spill onto tighter servers, so every tier with a TPOT
    target at least as loose counts. ``tiers``: (TTFT s, TPOT s, output tokens) each."""
    return max(
        (predicted_request_s(ttft, tpot, out) for ttft, tpot, out in tiers if tpot >= own_tpot_s),
        default=0.0,
    )


def finishes_before_deadline(now: float, deadline: float, predicted_s: float, margin_s: float = 5.0) -> bool:
    """Route a new request to a server under notice? Yes when it is predicted to finish
    ``margin_s`` before the node goes: it then never needs a migration."""
    return now + predicted_s <= deadline - margin_s


def admit_until(
    notice_at: float,
    deadline: float,
    predicted_s: float,
    margin_s: float = 5.0,
    cap_s: float | None = None,
) -> float:
    """Until when a server under notice keeps taking new requests (deadline-aware
    draining). Stopping at the notice throws away the whole window: with a 2-minute AWS
    notice and a storm that takes half of the spot servers at once, the fleet loses that
    capacity two minutes early while the replacements are still loading, and the tight
    tier's attainment drops (kubetier simulate spot --availability storm --notice-s 120).
    A request predicted (``predicted_s``: :func:`predicted_request_s` of a tier's long
    request) to finish by ``deadline - margin_s`` is still served where it is; one that
    runs longer than predicted is migrated at token level like any other stream.

    ``cap_s``: the most the server can keep accepting after the notice whatever the
    prediction (on Kubernetes the pod is deleted at the notice, so that its replacement
    starts at once, and its engine accepts requests until its preStop sleep ends)."""
    until = deadline - margin_s - max(0.0, predicted_s)
    if cap_s is not None:
        until = min(until, notice_at + cap_s)
    return max(notice_at, until)


# --------------------------------------------------------------------------- replacement, fallback, return


@dataclass(frozen=True)
class SpotConfig:
    """Parameters of the fallback/return policy (SkyServe-style)."""

    fallback_after_s: float = 120.0  # spot not obtained within this -> on-demand fallback
    return_after_s: float = 300.0  # spot steadily available this long -> give back the fallback
    over_provision: int = 0  # extra spot replicas beyond the tier's need
    zone_cooldown_s: float = 600.0  # a zone that just lost a node is avoided for this long


@dataclass(frozen=True)
class TierCapacity:
    """What the operator observed of one tier's spot-eligible pool."""

    wanted: int  # serving replicas the tier needs in its spot-eligible pool
    spot_ready: int  # Ready on spot nodes, not under notice
    spot_pending: int  # spot-eligible pods not yet Ready
    noticed: int  # replicas on nodes under a preemption notice
    pending_since: float | None  # when the oldest pending spot pod was created
    spot_steady_since: float | None  # since when spot_ready >= wanted without interruption
    fallback: int  # on-demand fallback replicas running now
    preempted_zones: Mapping[str, float] = field(default_factory=dict)  # zone -> last preemption time


@dataclass(frozen=True)
class CapacityPlan:
    spot_replicas: int  # replicas of the spot-eligible Deployment
    fallback_replicas: int  # replicas of the on-demand fallback Deployment
    avoid_zones: tuple[str, ...]
    reason: str


def plan_capacity(view: TierCapacity, now: float, cfg: SpotConfig = SpotConfig()) -> CapacityPlan:
    """Replicas for a tier's spot pool and its on-demand fallback.

    A server under notice is already gone for planning: its replacement is requested at
    once (the spot Deployment grows by the noticed count until the node is deleted).
    """
    avoid = tuple(sorted(z for z, t in view.preempted_zones.items() if now - t < cfg.zone_cooldown_s))
    spot_target = view.wanted + cfg.over_provision + view.noticed
    shortfall = max(0, view.wanted - view.spot_ready)
    waited = math.inf if view.pending_since is None else now - view.pending_since
    if shortfall > 0 and view.spot_pending > 0 and waited < cfg.fallback_after_s and view.fallback == 0:
        return CapacityPlan(spot_target, 0, avoid, f"waiting for {shortfall} spot replica(s) ({waited:.0f}s)")
    if shortfall > 0:
        # Spot did not come within the bound (or nothing is even pending): cover the gap on demand.
        fallback = max(view.fallback, shortfall)
        return CapacityPlan(spot_target, fallback, avoid, f"on-demand fallback for {fallback} replica(s)")
    if view.fallback > 0:
        steady = 0.0 if view.spot_steady_since is None else now - view.spot_steady_since
        if steady >= cfg.return_after_s:
            return CapacityPlan(spot_target, 0, avoid, f"spot steady for {steady:.0f}s: returning to spot")
        return CapacityPlan(spot_target, view.fallback, avoid, "spot back; keeping fallback until steady")
    return CapacityPlan(spot_target, 0, avoid, "spot capacity sufficient")


def should_return_to_spot(
    prefers_spot: bool,
    on_demand_pods: int,
    ready_replicas: int,
    spot_free_gpus: int,
    gpus_per_replica: int,
    spot_steady_s: float,
    cfg: SpotConfig = SpotConfig(),
) -> bool:
    """Move one spot-eligible replica from on-demand back to spot now?

    The scheduler (or Karpenter) already falls back to on-demand when spot is short: a
    spot-eligible pod lands wherever capacity is. Nothing moves it back when spot returns,
    so it keeps paying on-demand prices. One replica at a time moves back once spot has
    been steady for ``return_after_s`` and has room for it, and never while the tier has
    fewer than two Ready replicas (the move is a restart elsewhere).
    """
    return (
        prefers_spot
        and on_demand_pods > 0
        and ready_replicas >= 2
        and spot_free_gpus >= max(1, gpus_per_replica)
        and spot_steady_s >= cfg.return_after_s
    )
