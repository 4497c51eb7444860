"""Scrape configuration and alerts in the chart: Prometheus Operator objects when the
cluster serves monitoring.coreos.com/v1 ("auto"), annotations otherwise."""

from __future__ import annotations

import subprocess

import yaml
from chart_support import CHART, NAMESPACE, RELEASE

MONITORING = [f"monitoring.coreos.com/v1/{k}" for k in ("ServiceMonitor", "PodMonitor", "PrometheusRule")]


def template(helm: str, *args: str) -> list[dict]:
    res = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def kinds(objs: list[dict]) -> set[str]:
    return {o["kind"] for o in objs}


def test_auto_without_prometheus_operator_renders_annotations_only(helm):
    objs = template(helm)
    assert not kinds(objs) & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    [router] = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("router")]
    ann = router["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"


def test_auto_with_prometheus_operator_renders_monitors_and_rules(helm):
    args = [a for v in MONITORING for a in ("--api-versions", v)]
    objs = template(helm, *args)
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds(objs)
    [pm] = [o for o in objs if o["kind"] == "PodMonitor" and o["metadata"]["name"].endswith("engines")]
    exprs = {e["key"]: e["operator"] for e in pm["spec"]["selector"]["matchExpressions"]}
    assert exprs == {"kubetier.io/service": "Exists", "kubetier.io/role": "Exists"}
    assert pm["spec"]["podMetricsEndpoints"][0] == {"port": "http", "path": "/metrics", "interval": "15s"}
    [rule] = [o for o in objs if o["kind"] == "PrometheusRule"]
    shipped = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rule["spec"] == shipped
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "KubetierTierAttainmentBurnRate",
        "KubetierRouterRejecting",
        "KubetierEngineNotReady",
        "KubetierStandbyExhausted",
        "KubetierPowerOverThreshold",
        "KubetierSpotInterruptionNotice",
        "KubetierOperatorReconcileErrors",
        "KubetierOperatorAbsent",
    } <= alerts


def test_explicit_false_wins_over_auto_and_true_renders_without_crds(helm):
    args = [a for v in MONITORING for a in ("--api-versions", v)]
    objs = template(
        helm, *args, "--set", "metrics.prometheusRule.enabled=false", "--set", "metrics.podMonitor.enabled=false"
    )
    assert "PrometheusRule" not in kinds(objs) and "PodMonitor" not in kinds(objs)
    assert "ServiceMonitor" in kinds(objs)
    assert "PrometheusRule" in kinds(template(helm, "--set", "metrics.prometheusRule.enabled=true"))


def test_dashboard_configmap(helm):
    objs = template(helm, "--set", "metrics.grafanaDashboard.enabled=true")
    [cm] = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["kubetier-dashboard.json"] == (CHART / "files" / "kubetier-dashboard.json").read_text().rstrip(
        "\n"
    )


def operator_workload(objs: list[dict]) -> dict:
    [op] = [
        o for o in objs if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"].endswith("operator")
    ]
    return op


def test_operator_metrics_port_podmonitor_and_networkpolicy(helm):
    args = [a for v in MONITORING for a in ("--api-versions", v)]
    objs = template(helm, *args, "--set", "networkPolicy.enabled=true", "--set", "operator.metrics.port=9102")
    op = operator_workload(objs)
    pod = op["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert "--metrics-port=9102" in container["args"] and "--metrics-bind-address=0.0.0.0" in container["args"]
    assert {"name": "metrics", "containerPort": 9102} in container["ports"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9102"
    [pm] = [o for o in objs if o["kind"] == "PodMonitor" and o["metadata"]["name"].endswith("operator")]
    assert pm["spec"]["selector"]["matchLabels"] == op["spec"]["selector"]["matchLabels"]
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [np] = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("operator")]
    assert np["spec"]["ingress"] == [{"ports": [{"port": 9102, "protocol": "TCP"}]}]


def test_operator_metrics_off(helm):
    args = [a for v in MONITORING for a in ("--api-versions", v)]
    objs = template(helm, *args, "--set", "networkPolicy.enabled=true", "--set", "operator.metrics.enabled=false")
    [container] = operator_workload(objs)["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["args"] if a.startswith("--metrics")]
    assert not [o for o in objs if o["kind"] == "PodMonitor" and o["metadata"]["name"].endswith("operator")]
    [np] = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("operator")]
    assert "ingress" not in np["spec"]
