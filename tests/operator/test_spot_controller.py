"""The spot controller's pure half: node notices -> marked pods, grace periods, windows."""

import pytest

from kubetier.operator.spot.handlers import windows_from_env
from kubetier.operator.spot.notices import (
    POD_DEADLINE_ANNOTATION,
    grace_period_s,
    mark_patch,
    node_notice,
    pods_on,
)
from kubetier.policy.spot import rfc3339

NOW = 1_800_000_000.0


def _node(taints=(), annotations=None):
    return {
        "metadata": {"name": "gpu-spot-1", "annotations": annotations or {}},
        "spec": {"taints": [dict(t) for t in taints]},
    }


def _pod(name, node, annotations=None, deleting=False):
    meta = {"name": name, "namespace": "team", "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-03T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node}}


def test_node_without_notice_and_with_one():
    assert node_notice(_node([{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]), NOW) is None
    notice = node_notice(_node([{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]), NOW)
    assert notice is not None and notice.node == "gpu-spot-1" and notice.deadline == NOW + 30


def test_only_unmarked_live_pods_on_the_node_are_drained():
    pods = [
        _pod("a", "gpu-spot-1"),
        _pod("b", "gpu-spot-2"),
        _pod("c", "gpu-spot-1", annotations={POD_DEADLINE_ANNOTATION: "x"}),
        _pod("d", "gpu-spot-1", deleting=True),
    ]
    assert [p["metadata"]["name"] for p in pods_on("gpu-spot-1", pods)] == ["a"]


def test_mark_patch_and_grace_period():
    notice = node_notice(_node([{"key": "aws-node-termination-handler/spot-itn", "effect": "NoSchedule"}]), NOW)
    assert notice is not None
    patch = mark_patch(notice)
    assert patch["metadata"]["annotations"][POD_DEADLINE_ANNOTATION] == rfc3339(NOW + 120)
    assert patch["metadata"]["annotations"]["kubetier.io/preemption-source"] == "aws-nth"
    assert grace_period_s(notice, NOW, margin_s=5) == 115
    assert grace_period_s(notice, NOW + 200, margin_s=5) == 1  # late: still a positive grace


def test_windows_are_parameters():
    w = windows_from_env({"KUBETIER_NOTICE_WINDOW_AWS": "90", "KUBETIER_NOTICE_WINDOW_GCP": "25"})
    assert (w.aws, w.gcp, w.azure) == (90.0, 25.0, 30.0)


def test_noticed_pods_admit_requests_predicted_to_finish_in_time():
    from kubetier.api.labels import ADMIT_UNTIL_ANNOTATION
    from kubetier.api.tier import SLOTier
    from kubetier.operator.spot.notices import tier_admit_until
    from kubetier.policy.spot import PreemptionNotice

    notice = PreemptionNotice("n1", "aws-nth", received_at=1_800_000_000.0, deadline=1_800_000_120.0)
    tight = SLOTier(name="interactive", ttft_ms=300, tpot_ms=30, mean_output_tokens=256)
    # 0.3 s + 511 x 30 ms = 15.63 s: until 120 - 5 - 15.63 s after the notice, capped by the preStop sleep
    assert tier_admit_until(notice, tight, 5.0, cap_s=1000.0) == pytest.approx(1_800_000_099.37)
    assert tier_admit_until(notice, tight, 5.0, cap_s=15.0) == 1_800_000_015.0
    patch = mark_patch(notice, 1_800_000_015.0)
    assert patch["metadata"]["annotations"][ADMIT_UNTIL_ANNOTATION] == "2027-01-15T08:00:15Z"
    assert ADMIT_UNTIL_ANNOTATION not in mark_patch(notice)["metadata"]["annotations"]
