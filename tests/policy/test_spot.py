"""The spot policy's pure decisions: capacity labels, notices, drain, fallback and return."""

from datetime import UTC, datetime

import pytest

from kubetier.policy.spot import (
    CAPACITY_SCHEMES,
    DEADLINE_ANNOTATION,
    NoticeWindows,
    SpotConfig,
    StreamView,
    Taint,
    TierCapacity,
    capacity_scheme,
    notice_from_node,
    parse_aws_instance_action,
    parse_azure_scheduled_events,
    parse_gcp_preempted,
    plan_capacity,
    plan_drain,
)

NOW = 1_800_000_000.0


def _node_matches(requirement: dict, labels: dict[str, str]) -> bool:
    """Kubernetes node selector semantics for In/NotIn (NotIn matches a missing label)."""
    value = labels.get(requirement["key"])
    if requirement["operator"] == "In":
        return value in requirement["values"]
    assert requirement["operator"] == "NotIn"
    return value not in requirement["values"]


@pytest.mark.parametrize("name", sorted(CAPACITY_SCHEMES))
def test_every_preset_tells_spot_from_on_demand_and_unlabelled_nodes_are_on_demand(name):
    scheme = CAPACITY_SCHEMES[name]
    spot = {scheme.label: scheme.spot_values[0]}
    assert scheme.capacity_type(spot) == "spot"
    assert scheme.capacity_type({}) == "on-demand"
    # On-demand placement schedules on a cluster without any spot tooling (no label at all).
    assert _node_matches(scheme.on_demand_requirement(), {})
    assert not _node_matches(scheme.on_demand_requirement(), spot)
    assert _node_matches(scheme.spot_requirement(), spot)
    assert not _node_matches(scheme.spot_requirement(), {})


def test_known_platform_labels():
    assert capacity_scheme("eks").capacity_type({"eks.amazonaws.com/capacityType": "SPOT"}) == "spot"
    assert capacity_scheme("eks").capacity_type({"eks.amazonaws.com/capacityType": "ON_DEMAND"}) == "on-demand"
    assert capacity_scheme("gke").capacity_type({"cloud.google.com/gke-spot": "true"}) == "spot"
    assert capacity_scheme("aks").capacity_type({"kubernetes.azure.com/scalesetpriority": "spot"}) == "spot"
    assert capacity_scheme("karpenter").capacity_type({"karpenter.sh/capacity-type": "reserved"}) == "on-demand"


def test_custom_scheme_and_unknown_name():
    custom = capacity_scheme("ignored", label="example.com/lifecycle", spot_value="preemptible")
    assert custom.capacity_type({"example.com/lifecycle": "preemptible"}) == "spot"
    with pytest.raises(ValueError, match="unknown capacity scheme 'nope'"):
        capacity_scheme("nope")


@pytest.mark.parametrize(
    ("taint", "source", "window"),
    [
        (Taint("karpenter.sh/disrupted"), "karpenter", 30.0),
        (Taint("aws-node-termination-handler/spot-itn"), "aws-nth", 120.0),
        (Taint("cloud.google.com/impending-node-termination"), "gke", 30.0),
    ],
)
def test_notice_taints(taint, source, window):
    notice = notice_from_node("n1", [Taint("nvidia.com/gpu"), taint], {}, NOW)
    assert notice is not None
    assert notice.source == source
    assert notice.deadline == NOW + window
    assert notice.seconds_left(NOW + 10) == window - 10


def test_no_notice_on_an_ordinary_node_and_karpenter_legacy_value_checked():
    assert notice_from_node("n1", [Taint("nvidia.com/gpu")], {}, NOW) is None
    assert notice_from_node("n1", [Taint("karpenter.sh/disruption", value="other")], {}, NOW) is None
    assert notice_from_node("n1", [Taint("karpenter.sh/disruption", value="disrupting")], {}, NOW) is not None


def test_agent_deadline_wins_when_earlier_and_windows_are_parameters():
    deadline = datetime.fromtimestamp(NOW + 12, tz=UTC).isoformat().replace("+00:00", "Z")
    notice = notice_from_node(
        "n1",
        [Taint("aws-node-termination-handler/spot-itn")],
        {DEADLINE_ANNOTATION: deadline, "kubetier.io/preemption-source": "aws"},
        NOW,
    )
    assert notice is not None and notice.source == "aws" and notice.deadline == pytest.approx(NOW + 12)
    short = notice_from_node("n1", [Taint("aws-node-termination-handler/spot-itn")], {}, NOW, NoticeWindows(aws=7))
    assert short is not None and short.deadline == NOW + 7


def test_metadata_bodies():
    when = datetime.fromtimestamp(NOW + 120, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert parse_aws_instance_action(f'{{"action": "terminate", "time": "{when}"}}', NOW) == pytest.approx(NOW + 120)
    assert parse_aws_instance_action('{"action": "none"}', NOW) is None
    assert parse_aws_instance_action("<html>not found</html>", NOW) is None
    assert parse_gcp_preempted("TRUE\n", NOW) == NOW + 30
    assert parse_gcp_preempted("FALSE", NOW) is None
    not_before = datetime.fromtimestamp(NOW + 25, tz=UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    body = (
        '{"DocumentIncarnation": 3, "Events": [{"EventId": "x", "EventType": "Preempt",'
        f' "Resources": ["vm-1"], "EventStatus": "Scheduled", "NotBefore": "{not_before}"}}]}}'
    )
    assert parse_azure_scheduled_events(body, "vm-1", NOW) == pytest.approx(NOW + 25)
    assert parse_azure_scheduled_events(body, "vm-2", NOW) is None
    assert parse_azure_scheduled_events('{"Events": [{"EventType": "Reboot"}]}', "vm-1", NOW) is None


def test_drain_finishes_what_fits_and_migrates_the_rest():
    streams = [
        StreamView("a", tokens_left=100, tpot_s=0.05),  # 5 s
        StreamView("b", tokens_left=2000, tpot_s=0.05),  # 100 s
        StreamView("c", tokens_left=500, tpot_s=0.05),  # 25 s: exactly the budget
    ]
    plan = {s.request_id: s.action for s in plan_drain(streams, NOW, NOW + 30, margin_s=5)}
    assert plan == {"a": "finish", "b": "migrate", "c": "finish"}
    late = {s.request_id: s.action for s in plan_drain(streams, NOW + 29, NOW + 30, margin_s=5)}
    assert set(late.values()) == {"migrate"}


def _view(**kw) -> TierCapacity:
    base = dict(
        wanted=4,
        spot_ready=4,
        spot_pending=0,
        noticed=0,
        pending_since=None,
        spot_steady_since=NOW - 1000,
        fallback=0,
    )
    base.update(kw)
    return TierCapacity(**base)


def test_a_notice_asks_for_a_replacement_at_once():
    plan = plan_capacity(_view(spot_ready=3, noticed=1, spot_pending=0), NOW)
    assert plan.spot_replicas == 5  # 4 wanted + 1 replacing the noticed one
    assert plan.fallback_replicas == 1  # nothing pending yet: the gap is covered on demand


def test_fallback_only_after_the_bound_then_return_after_steady_spot():
    cfg = SpotConfig(fallback_after_s=120, return_after_s=300)
    waiting = plan_capacity(_view(spot_ready=2, spot_pending=2, pending_since=NOW - 60), NOW, cfg)
    assert waiting.fallback_replicas == 0 and "waiting" in waiting.reason
    fallback = plan_capacity(_view(spot_ready=2, spot_pending=2, pending_since=NOW - 121), NOW, cfg)
    assert fallback.fallback_replicas == 2
    back_not_steady = plan_capacity(_view(fallback=2, spot_steady_since=NOW - 100), NOW, cfg)
    assert back_not_steady.fallback_replicas == 2
    returned = plan_capacity(_view(fallback=2, spot_steady_since=NOW - 301), NOW, cfg)
    assert returned.fallback_replicas == 0 and "returning" in returned.reason


def test_over_provisioning_and_zone_cooldown():
    cfg = SpotConfig(over_provision=1, zone_cooldown_s=600)
    plan = plan_capacity(_view(preempted_zones={"zone-a": NOW - 100, "zone-b": NOW - 700}), NOW, cfg)
    assert plan.spot_replicas == 5
    assert plan.avoid_zones == ("zone-a",)


def test_return_to_spot_one_replica_when_spot_is_steady_and_has_room():
    from kubetier.policy.spot import should_return_to_spot

    cfg = SpotConfig(return_after_s=300)
    ok = dict(
        prefers_spot=True, on_demand_pods=2, ready_replicas=3, spot_free_gpus=1, gpus_per_replica=1, spot_steady_s=301
    )
    assert should_return_to_spot(**ok, cfg=cfg)
    assert not should_return_to_spot(**{**ok, "spot_steady_s": 100}, cfg=cfg)  # spot not steady yet
    assert not should_return_to_spot(**{**ok, "spot_free_gpus": 0}, cfg=cfg)  # no room
    assert not should_return_to_spot(**{**ok, "gpus_per_replica": 4, "spot_free_gpus": 2}, cfg=cfg)
    assert not should_return_to_spot(**{**ok, "ready_replicas": 1}, cfg=cfg)  # never restart the last one
    assert not should_return_to_spot(**{**ok, "prefers_spot": False}, cfg=cfg)
    assert not should_return_to_spot(**{**ok, "on_demand_pods": 0}, cfg=cfg)


def test_deadline_aware_draining_admits_what_finishes_in_time():
    from kubetier.policy.spot import admit_until, finishes_before_deadline, predicted_request_s

    # 1 s to the first token, 99 more tokens at 50 ms: 5.95 s
    predicted = predicted_request_s(1.0, 0.05, 100)
    assert predicted == pytest.approx(5.95)
    assert finishes_before_deadline(now=0.0, deadline=11.0, predicted_s=predicted, margin_s=5.0)
    assert not finishes_before_deadline(now=0.1, deadline=11.0, predicted_s=predicted, margin_s=5.0)
    # a 120 s notice keeps the server taking such requests for 109 s, not 0
    assert admit_until(0.0, 120.0, predicted, margin_s=5.0) == pytest.approx(109.05)
    # capped (the pod's preStop sleep), and never before the notice itself
    assert admit_until(0.0, 120.0, predicted, margin_s=5.0, cap_s=15.0) == 15.0
    assert admit_until(50.0, 55.0, predicted, margin_s=5.0) == 50.0


def test_longest_request_counts_the_looser_tiers_that_spill_onto_a_server():
    from kubetier.policy.spot import longest_request_s

    tiers = [(0.5, 0.025, 56), (1.5, 0.05, 520), (8.0, 0.15, 708)]
    assert longest_request_s(tiers, 0.15) == pytest.approx(8.0 + 0.15 * 707)
    assert longest_request_s(tiers, 0.025) == longest_request_s(tiers, 0.15)  # batch may spill onto it
    assert longest_request_s([(0.5, 0.025, 56)], 0.025) == pytest.approx(0.5 + 0.025 * 55)
    assert longest_request_s([], 0.025) == 0.0
