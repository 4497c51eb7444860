"""The operator's Prometheus metrics (kubetier.operator.metrics): what the helpers count,
and the exposition served over real HTTP on loopback by `serve` (the chart's metrics port).
The operator scraped by a real Prometheus on the local cluster: e2e/test_operator_metrics.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubetier.kube import KubeError
from kubetier.operator import metrics


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_reconciling_counts_results_errors_and_durations():
    before_ok = sample("kubetier_operator_reconciles_total", controller="modelservice", result="ok")
    before_problem = sample("kubetier_operator_reconciles_total", controller="modelservice", result="problem")
    before_error = sample("kubetier_operator_reconciles_total", controller="modelservice", result="error")
    before_conflict = sample("kubetier_operator_reconcile_errors_total", controller="modelservice", kind="conflict")
    before_unreachable = sample(
        "kubetier_operator_reconcile_errors_total", controller="modelservice", kind="unreachable"
    )
    before_count = sample("kubetier_operator_reconcile_duration_seconds_count", controller="modelservice")

    async def run() -> None:
        with metrics.reconciling("modelservice"):
            await asyncio.sleep(0.01)
        with metrics.reconciling("modelservice") as rec:
            rec.problem = True
        with pytest.raises(KubeError), metrics.reconciling("modelservice"):
            raise KubeError(409, "PATCH", "/apis/x", "conflict")
        with pytest.raises(httpx.ConnectError), metrics.reconciling("modelservice"):
            raise httpx.ConnectError("refused")

    asyncio.run(run())
    assert sample("kubetier_operator_reconciles_total", controller="modelservice", result="ok") == before_ok + 1
    assert (
        sample("kubetier_operator_reconciles_total", controller="modelservice", result="problem") == before_problem + 1
    )
    assert sample("kubetier_operator_reconciles_total", controller="modelservice", result="error") == before_error + 2
    assert (
        sample("kubetier_operator_reconcile_errors_total", controller="modelservice", kind="conflict")
        == before_conflict + 1
    )
    assert (
        sample("kubetier_operator_reconcile_errors_total", controller="modelservice", kind="unreachable")
        == before_unreachable + 1
    )
    assert sample("kubetier_operator_reconcile_duration_seconds_count", controller="modelservice") == before_count + 4
    assert sample("kubetier_operator_reconcile_duration_seconds_sum", controller="modelservice") >= 0.01


def test_a_cancelled_reconcile_is_not_counted():
    before = sum(sample("kubetier_operator_reconciles_total", controller="spot", result=r) for r in metrics.RESULTS)

    async def run() -> None:
        with metrics.reconciling("spot"):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())
    assert (
        sum(sample("kubetier_operator_reconciles_total", controller="spot", result=r) for r in metrics.RESULTS)
        == before
    )


def test_scale_decisions_and_forgetting_a_modelservice():
    up = sample(
        "kubetier_operator_scale_decisions_total", namespace="ns", modelservice="chat", tier="fast", direction="up"
    )
    metrics.record_desired("ns", "chat", {"fast": 3, "batch": 1}, {"fast": (1, 3)})
    metrics.record_desired("ns", "chat", {"fast": 2, "batch": 1}, {"fast": (3, 2)})
    assert sample("kubetier_operator_desired_replicas", namespace="ns", modelservice="chat", tier="fast") == 2
    assert sample("kubetier_operator_desired_replicas", namespace="ns", modelservice="chat", tier="batch") == 1
    assert (
        sample(
            "kubetier_operator_scale_decisions_total", namespace="ns", modelservice="chat", tier="fast", direction="up"
        )
        == up + 1
    )
    assert (
        sample(
            "kubetier_operator_scale_decisions_total",
            namespace="ns",
            modelservice="chat",
            tier="fast",
            direction="down",
        )
        >= 1
    )
    metrics.forget_modelservice("ns", "chat")
    assert (
        metrics.REGISTRY.get_sample_value(
            "kubetier_operator_desired_replicas", {"namespace": "ns", "modelservice": "chat", "tier": "fast"}
        )
        is None
    )


def test_power_levels_are_one_hot_and_forgotten_with_the_budget():
    metrics.record_power("rack-1", {"level": "Capping", "drawnWatts": 5200.5, "budgetWatts": 5000, "cappedPods": 3})
    levels = {
        lv: sample("kubetier_operator_power_level", powerbudget="rack-1", level=lv) for lv in metrics.POWER_LEVELS
    }
    assert levels == {"normal": 0.0, "capping": 1.0, "braking": 0.0}
    assert sample("kubetier_operator_power_drawn_watts", powerbudget="rack-1") == 5200.5
    assert sample("kubetier_operator_power_budget_watts", powerbudget="rack-1") == 5000
    assert sample("kubetier_operator_power_capped_pods", powerbudget="rack-1") == 3
    metrics.forget_powerbudget("rack-1")
    assert metrics.REGISTRY.get_sample_value("kubetier_operator_power_drawn_watts", {"powerbudget": "rack-1"}) is None


def test_spot_notices_and_drained_pods():
    n = sample("kubetier_operator_spot_notices_total", source="aws")
    p = sample("kubetier_operator_spot_drained_pods_total", source="aws")
    metrics.record_spot_notice("aws", 2)
    assert sample("kubetier_operator_spot_notices_total", source="aws") == n + 1
    assert sample("kubetier_operator_spot_drained_pods_total", source="aws") == p + 2


def test_served_on_loopback_in_the_prometheus_text_format():
    port = metrics.serve(0, "127.0.0.1")
    res = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert res.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(res.text)}
    assert {"kubetier_operator_reconciles", "kubetier_operator_reconcile_duration_seconds"} <= set(families)
    assert "kubetier_operator_info" in families and "process_cpu_seconds" in families
    # Every controller's result series exists from the start (rate() needs a first zero).
    seen = {
        (s.labels["controller"], s.labels["result"])
        for s in families["kubetier_operator_reconciles"].samples
        if s.name.endswith("_total")
    }
    assert {(c, r) for c in metrics.CONTROLLERS for r in metrics.RESULTS} <= seen
