"""The Grafana dashboard: generated, structurally valid, every query parsed by
Prometheus' own parser (wrapped as recording rules for `promtool check rules`), every
panel the issue asks for present, and the chart ships the generated JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from kubetier.observability import dashboard
from kubetier.observability.main import DASHBOARD_FILE, dashboard_json

REPO = Path(__file__).resolve().parents[2]


def test_dashboard_is_valid_and_complete():
    doc = dashboard.dashboard()
    assert dashboard.validate(doc) == []
    titles = " | ".join(p["title"] for p in doc["panels"]).lower()
    for want in ("attainment", "first token", "per output token", "spills", "queue", "capacity type", "power"):
        assert want in titles, want
    exprs = " ".join(dashboard.queries(doc))
    for metric in (
        "kubetier_router_slo_met_total",
        "kubetier_router_ttft_seconds_bucket",
        "kubetier_router_tpot_seconds_bucket",
        "kubetier_router_spills_total",
        "kubetier_router_queue_length",
        "kube_node_labels",
        "kubetier_engine_power_watts",
        "kubetier_operator_reconciles_total",
        "kubetier_operator_reconcile_duration_seconds_bucket",
        "kubetier_operator_desired_replicas",
        "kubetier_operator_power_level",
    ):
        assert metric in exprs, metric


def test_validate_catches_problems():
    doc = dashboard.dashboard()
    doc["panels"][1]["id"] = doc["panels"][0]["id"]
    doc["panels"][2]["gridPos"] = dict(doc["panels"][0]["gridPos"])
    problems = dashboard.validate(doc)
    assert any("unique" in p for p in problems) and any("overlaps" in p for p in problems)


def test_every_query_parses(promtool, tmp_path):
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": q}
                    for i, q in enumerate(dashboard.queries(dashboard.dashboard()))
                ],
            }
        ]
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_chart_ships_the_generated_dashboard():
    shipped = (REPO / "charts/kubetier/files" / DASHBOARD_FILE).read_text()
    assert shipped == dashboard_json()
    assert json.loads(shipped)["uid"] == dashboard.UID
