"""The generated alert rules, evaluated by Prometheus' own rule engine (`promtool test
rules`) on synthetic series: each alert fires on the situation it names and stays quiet
on a healthy one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from kubetier.observability import alerts
from kubetier.observability.main import RULES_FILE, rules_yaml

REPO = Path(__file__).resolve().parents[2]


def series(name: str, values: str, **labels: str) -> dict:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{sel}}}", "values": values}


def tier_traffic(tier: str, met_per_min: int, total_per_min: int = 100, model: str = "m") -> list[dict]:
    return [
        series(
            "kubetier_router_requests_total", f"0+{total_per_min}x300", model=model, tier=tier, worker="1", outcome="ok"
        ),
        series("kubetier_router_slo_met_total", f"0+{met_per_min}x300", model=model, tier=tier, worker="1"),
    ]


def without_annotations(rules: str) -> str:
    """promtool compares annotations as well as labels; the annotations are templates over
    $value (checked by `promtool check rules`), so unit tests compare labels only."""
    doc = yaml.safe_load(rules)
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return yaml.safe_dump(doc, sort_keys=False)


def run_promtool(promtool: str, tmp_path: Path, rules: str, tests: list[dict]) -> subprocess.CompletedProcess:
    (tmp_path / RULES_FILE).write_text(without_annotations(rules))
    doc = {"rule_files": [RULES_FILE], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return subprocess.run(
        [promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def check(promtool: str, tmp_path: Path, tests: list[dict], rules: str | None = None) -> None:
    res = run_promtool(promtool, tmp_path, rules or rules_yaml(), tests)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rules_file_is_valid(promtool, tmp_path):
    (tmp_path / RULES_FILE).write_text(rules_yaml())
    res = subprocess.run([promtool, "check", "rules", str(tmp_path / RULES_FILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_chart_ships_the_generated_rules():
    assert (REPO / "charts/kubetier/files" / RULES_FILE).read_text() == rules_yaml()


def test_burn_rate_fires_on_a_failing_tier_only(promtool, tmp_path):
    # interactive: 5 of 100 requests meet the SLO (95% misses); batch: 99 of 100 (1%).
    traffic = tier_traffic("interactive", 5) + tier_traffic("batch", 99)
    labels = {"model": "m", "tier": "interactive"}
    check(
        promtool,
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": traffic,
                "promql_expr_test": [
                    {
                        "expr": 'round(kubetier:tier_slo_errors:ratio_rate5m{tier="batch"}, 0.001)',
                        "eval_time": "30m",
                        "exp_samples": [{"labels": '{model="m",tier="batch"}', "value": 0.01}],
                    }
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "KubetierTierAttainmentBurnRate", "exp_alerts": []},
                    {
                        "eval_time": "70m",
                        "alertname": "KubetierTierAttainmentBurnRate",
                        "exp_alerts": [
                            {"exp_labels": {**labels, "severity": "critical", "window": "1h"}},
                            {"exp_labels": {**labels, "severity": "critical", "window": "6h"}},
                        ],
                    },
                    {
                        "eval_time": "70m",
                        "alertname": "KubetierTierAttainmentBudgetBurn",
                        "exp_alerts": [{"exp_labels": {**labels, "severity": "warning", "window": "3d"}}],
                    },
                ],
            }
        ],
    )


def test_tier_objective_override(promtool, tmp_path):
    """interactive at 99%: 5% misses burns its 1% budget 5x: the 6 h page stays quiet (6x),
    the 3 d ticket (1x) fires; batch at the default 90% is fine with the same 5%."""
    rules = rules_yaml(alerts.AlertSettings(tier_objectives={"interactive": 0.99}))
    traffic = tier_traffic("interactive", 95) + tier_traffic("batch", 95)
    check(
        promtool,
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": traffic,
                "alert_rule_test": [
                    {"eval_time": "70m", "alertname": "KubetierTierAttainmentBurnRate", "exp_alerts": []},
                    {
                        "eval_time": "70m",
                        "alertname": "KubetierTierAttainmentBudgetBurn",
                        "exp_alerts": [
                            {"exp_labels": {"model": "m", "tier": "interactive", "severity": "warning", "window": "3d"}}
                        ],
                    },
                ],
            }
        ],
        rules=rules,
    )


def test_operational_alerts(promtool, tmp_path):
    st = {"model": "m", "tier": "interactive"}
    check(
        promtool,
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [
                    series("kubetier_router_requests_total", "0+600x30", worker="1", outcome="ok", **st),
                    series("kubetier_router_rejections_total", "0+60x30", worker="1", reason="slo", **st),
                    series("kubetier_router_server_ready", "0x30", server="a", worker="1", **st),
                    series("kubetier_router_server_ready", "1x30", server="b", worker="1", **st),
                    series("kubetier_router_server_ready", "0x30", server="c", worker="1", model="m", tier="batch"),
                    series("kube_deployment_spec_replicas", "1x30", namespace="ns", deployment="m-interactive-standby"),
                    series(
                        "kube_deployment_status_replicas_available",
                        "0x30",
                        namespace="ns",
                        deployment="m-interactive-standby",
                    ),
                    series("kube_deployment_spec_replicas", "1x30", namespace="ns", deployment="m-batch-standby"),
                    series(
                        "kube_deployment_status_replicas_available",
                        "1x30",
                        namespace="ns",
                        deployment="m-batch-standby",
                    ),
                    series("kubetier_engine_power_watts", "700x30", pod="hot"),
                    series("kubetier_engine_power_watts", "400x30", pod="cool"),
                    series(
                        "kube_node_spec_taint",
                        "1x30",
                        node="spot-1",
                        key="aws-node-termination-handler/spot-itn",
                        effect="NoSchedule",
                    ),
                    series("kube_node_spec_taint", "1x30", node="od-1", key="nvidia.com/gpu", effect="NoSchedule"),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "KubetierRouterRejecting",
                        "exp_alerts": [{"exp_labels": {**st, "severity": "warning"}}],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "KubetierEngineNotReady",
                        "exp_alerts": [
                            {"exp_labels": {**st, "server": "a", "severity": "warning"}},
                            {"exp_labels": {"model": "m", "tier": "batch", "server": "c", "severity": "warning"}},
                        ],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "KubetierTierHasNoReadyEngine",
                        "exp_alerts": [{"exp_labels": {"model": "m", "tier": "batch", "severity": "critical"}}],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "KubetierStandbyExhausted",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "namespace": "ns",
                                    "deployment": "m-interactive-standby",
                                    "severity": "warning",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "KubetierPowerOverThreshold",
                        "exp_alerts": [{"exp_labels": {"pod": "hot", "severity": "warning"}}],
                    },
                    {
                        "eval_time": "1m",
                        "alertname": "KubetierSpotInterruptionNotice",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "node": "spot-1",
                                    "key": "aws-node-termination-handler/spot-itn",
                                    "severity": "warning",
                                }
                            }
                        ],
                    },
                ],
            }
        ],
    )


def test_a_wrong_expectation_fails(promtool, tmp_path):
    """The harness can fail: expecting a burn-rate alert on a healthy tier is reported."""
    res = run_promtool(
        promtool,
        tmp_path,
        rules_yaml(),
        [
            {
                "interval": "1m",
                "input_series": tier_traffic("interactive", 99),
                "alert_rule_test": [
                    {
                        "eval_time": "70m",
                        "alertname": "KubetierTierAttainmentBurnRate",
                        "exp_alerts": [{"exp_labels": {"model": "m", "tier": "interactive", "severity": "critical"}}],
                    }
                ],
            }
        ],
    )
    assert res.returncode != 0


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5])
def test_objectives_must_be_ratios(bad):
    with pytest.raises(ValueError, match="between 0 and 1"):
        alerts.AlertSettings(default_objective=bad)


def operator_series(info: bool = True) -> list[dict]:
    """A modelservice controller failing half its reconciles (API errors) and slow (every
    reconcile between 5 and 10 s); a powerbudget controller with only conflicts and fast."""
    out = [
        series("kubetier_operator_reconciles_total", "0+10x60", controller="modelservice", result="ok"),
        series("kubetier_operator_reconciles_total", "0+10x60", controller="modelservice", result="error"),
        series("kubetier_operator_reconcile_errors_total", "0+10x60", controller="modelservice", kind="api"),
        series("kubetier_operator_reconciles_total", "0+100x60", controller="powerbudget", result="ok"),
        series("kubetier_operator_reconciles_total", "0+50x60", controller="powerbudget", result="error"),
        series("kubetier_operator_reconcile_errors_total", "0+50x60", controller="powerbudget", kind="conflict"),
        series("kubetier_operator_power_level", "1x60", powerbudget="rack-a", level="braking"),
        series("kubetier_operator_power_level", "0x60", powerbudget="rack-b", level="braking"),
        series("kubetier_operator_power_level", "1x60", powerbudget="rack-b", level="capping"),
    ]
    for le, ms_rate, pb_rate in (("0.01", 0, 150), ("5", 0, 150), ("10", 20, 150), ("+Inf", 20, 150)):
        out.append(
            series(
                "kubetier_operator_reconcile_duration_seconds_bucket",
                f"0+{ms_rate}x60",
                controller="modelservice",
                le=le,
            )
        )
        out.append(
            series(
                "kubetier_operator_reconcile_duration_seconds_bucket",
                f"0+{pb_rate}x60",
                controller="powerbudget",
                le=le,
            )
        )
    if info:
        out.append(series("kubetier_operator_info", "1x60", version="0.1.0"))
    return out


def test_operator_alerts(promtool, tmp_path):
    check(
        promtool,
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": operator_series(),
                "alert_rule_test": [
                    # 50% of the modelservice controller's reconciles fail; the powerbudget
                    # controller's failures are all conflicts (retried, not alerted on).
                    {
                        "eval_time": "30m",
                        "alertname": "KubetierOperatorReconcileErrors",
                        "exp_alerts": [{"exp_labels": {"controller": "modelservice", "severity": "warning"}}],
                    },
                    {"eval_time": "10m", "alertname": "KubetierOperatorReconcileErrors", "exp_alerts": []},
                    {
                        "eval_time": "30m",
                        "alertname": "KubetierOperatorReconcileSlow",
                        "exp_alerts": [{"exp_labels": {"controller": "modelservice", "severity": "warning"}}],
                    },
                    {"eval_time": "30m", "alertname": "KubetierOperatorAbsent", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "KubetierPowerBraking",
                        "exp_alerts": [{"exp_labels": {"powerbudget": "rack-a", "severity": "critical"}}],
                    },
                ],
            },
            {
                "interval": "1m",
                "input_series": operator_series(info=False),
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "KubetierOperatorAbsent", "exp_alerts": []},
                    {
                        "eval_time": "15m",
                        "alertname": "KubetierOperatorAbsent",
                        "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
                    },
                ],
            },
        ],
    )
