"""From Kubernetes objects to the spot policy's inputs, and from its decisions to patches (pure).

A notice on a Node (``kubetier.policy.spot.notice_from_node``) marks every kubetier
serving pod on that node with the deadline (:data:`DEADLINE_ANNOTATION`): the router
stops sending it new requests at once and migrates the streams that cannot finish in
time; the pod is then deleted with a grace period that ends at the deadline, so its
ReplicaSet starts the replacement immediately (the noticed node carries a NoSchedule
taint, so the replacement lands elsewhere) while the old engine keeps serving until it is
drained.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubetier.api.labels import ADMIT_UNTIL_ANNOTATION, SERVING_POD_SELECTOR
from kubetier.api.tier import SLOTier
from kubetier.policy.spot import (
    DEADLINE_ANNOTATION,
    SOURCE_ANNOTATION,
    NoticeWindows,
    PreemptionNotice,
    Taint,
    admit_until,
    notice_from_node,
    rfc3339,
    tier_long_request_s,
)

# On a pod: the same deadline as on the node, and which notice source said so.
POD_DEADLINE_ANNOTATION = DEADLINE_ANNOTATION
POD_SOURCE_ANNOTATION = SOURCE_ANNOTATION
MANAGED_SERVING = SERVING_POD_SELECTOR


def node_notice(node: Mapping[str, Any], now: float, windows: NoticeWindows | None = None) -> PreemptionNotice | None:
    meta = node.get("metadata") or {}
    taints = [
        Taint(str(t.get("key", "")), str(t.get("effect", "")), str(t.get("value", "") or ""))
        for t in (node.get("spec") or {}).get("taints") or []
        if isinstance(t, Mapping)
    ]
    return notice_from_node(
        str(meta.get("name", "")), taints, meta.get("annotations") or {}, now, windows or NoticeWindows()
    )


def pods_on(node_name: str, pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """kubetier serving pods bound to ``node_name`` that are not already marked or going."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (pod.get("spec") or {}).get("nodeName") != node_name or meta.get("deletionTimestamp"):
            continue
        if POD_DEADLINE_ANNOTATION in (meta.get("annotations") or {}):
            continue
        out.append(pod)
    return out


def mark_patch(notice: PreemptionNotice, admit_until: float | None = None) -> dict[str, Any]:
    """Merge patch that tells the router a pod is going away and when, and until when it
    may still take new requests (deadline-aware draining; None: from now on, none)."""
    annotations = {POD_DEADLINE_ANNOTATION: rfc3339(notice.deadline), POD_SOURCE_ANNOTATION: notice.source}
    if admit_until is not None and admit_until > notice.received_at:
        annotations[ADMIT_UNTIL_ANNOTATION] = rfc3339(admit_until)
    return {"metadata": {"annotations": annotations}}


def tier_admit_until(notice: PreemptionNotice, tier: SLOTier, margin_s: float, cap_s: float) -> float:
    """Until when a server of ``tier`` under ``notice`` still takes new requests: while a
    long request of its own tier (twice its mean output at its TTFT and TPOT targets) is
    predicted to finish by the deadline less ``margin_s`` (the router checks each request
    of a looser tier, which may spill onto it, against the deadline itself), and at most
    ``cap_s`` after the notice (the pod is deleted at the notice and its engine accepts
    requests until its preStop sleep ends)."""
    predicted = tier_long_request_s(tier.ttft_ms, tier.tpot_ms, tier.mean_output_tokens)
    return admit_until(notice.received_at, notice.deadline, predicted, margin_s, cap_s)


def grace_period_s(notice: PreemptionNotice, now: float, margin_s: float) -> int:
    """The pod's termination grace: until the deadline, less a margin (at least 1 s)."""
    return max(1, int(notice.seconds_left(now) - margin_s))
