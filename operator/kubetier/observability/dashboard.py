"""The kubetier Grafana dashboard, generated (``kubetier observability dashboard``).

Rows: per-tier SLO attainment (what the burn-rate alerts watch), TTFT and TPOT percentiles
as the router saw them, spills/rejections/migrations, queue, replicas by capacity type
(kube-state-metrics pod and node labels), GPU power, and the operator's own metrics
(desired replicas and scale decisions, PowerBudget levels, reconcile rate, errors and
duration, spot drains). Every query reads a metric the router, the engines (engine
simulator, node agent), the operator or kube-state-metrics export; ``validate``
checks the structure Grafana needs and tests parse every query with promtool.
"""

from __future__ import annotations

import json
from typing import Any

UID = "kubetier-overview"
TITLE = "kubetier: SLO tiers"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MODEL_SEL = 'model=~"$model", tier=~"$tier"'


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def _panel(title: str, targets: list[tuple[str, str]], unit: str, description: str) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
    }


def _quantiles(metric: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (model, tier, le) (rate({metric}_bucket{{{MODEL_SEL}}}[$__rate_interval])))",
            f"{{{{model}}}}/{{{{tier}}}} p{round(q * 100)}",
        )
        for q in (0.5, 0.9, 0.99)
    ]


def panels() -> list[dict[str, Any]]:
    good = f"sum by (model, tier) (rate(kubetier_router_slo_met_total{{{MODEL_SEL}}}[$__rate_interval]))"
    total = (
        "sum by (model, tier) (rate(kubetier_router_requests_total"
        f'{{{MODEL_SEL}, outcome=~"ok|rejected|error|upstream_error"}}[$__rate_interval]))'
    )
    specs = [
        _panel(
            "SLO attainment per tier",
            [(f"{good} / {total}", "{{model}}/{{tier}}")],
            "percentunit",
            "Share of requests meeting the tier's TTFT and every token deadline; refused and failed requests count as misses.",
        ),
        _panel(
            "Time to first token (router)",
            _quantiles("kubetier_router_ttft_seconds"),
            "s",
            "Percentiles of TTFT measured at the router, per tier.",
        ),
        _panel(
            "Time per output token (router)",
            _quantiles("kubetier_router_tpot_seconds"),
            "s",
            "Percentiles of each request's mean TPOT, per tier.",
        ),
        _panel(
            "Spills, rejections, migrations",
            [
                (
                    f"sum by (tier) (rate(kubetier_router_spills_total{{{MODEL_SEL}}}[$__rate_interval]))",
                    "spilled {{tier}}",
                ),
                (
                    f"sum by (tier, reason) (rate(kubetier_router_rejections_total{{{MODEL_SEL}}}[$__rate_interval]))",
                    "rejected {{tier}} ({{reason}})",
                ),
                (
                    f"sum by (tier) (rate(kubetier_router_migrations_total{{{MODEL_SEL}}}[$__rate_interval]))",
                    "migrated {{tier}}",
                ),
            ],
            "reqps",
            "Spills: served by a tighter tier's server. Rejections: 429 (cannot be served in time). Migrations: streams resumed on another engine.",
        ),
        _panel(
            "Queue and in flight",
            [
                (f"sum by (tier) (kubetier_router_queue_length{{{MODEL_SEL}}})", "queued {{tier}}"),
                (f"sum by (tier) (kubetier_router_inflight{{{MODEL_SEL}}})", "in flight {{tier}}"),
            ],
            "short",
            "Requests waiting for a server and requests being served, per tier.",
        ),
        _panel(
            "Engine replicas by capacity type",
            [
                (
                    "count by (label_kubetier_io_tier, label_karpenter_sh_capacity_type) ("
                    'kube_pod_labels{label_kubetier_io_service!=""} * on (namespace, pod) group_left (node) '
                    "kube_pod_info * on (node) group_left (label_karpenter_sh_capacity_type) kube_node_labels)",
                    "{{label_kubetier_io_tier}} {{label_karpenter_sh_capacity_type}}",
                ),
                (
                    f"sum by (tier) (max by (tier, server) (kubetier_router_server_ready{{{MODEL_SEL}}}))",
                    "ready (router) {{tier}}",
                ),
            ],
            "short",
            "Engine pods per tier on on-demand and spot nodes (kube-state-metrics), and engines the router can use.",
        ),
        _panel(
            "GPU power",
            [
                ("sum by (pod) (kubetier_engine_power_watts)", "{{pod}}"),
                ("sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE)", "{{Hostname}} (DCGM)"),
                ("max by (powerbudget) (kubetier_operator_power_drawn_watts)", "{{powerbudget}} drawn (operator)"),
                ("max by (powerbudget) (kubetier_operator_power_budget_watts)", "{{powerbudget}} budget"),
            ],
            "watt",
            "Power drawn per engine (engine simulator / node agent) or per node (NVIDIA DCGM exporter), and each "
            "PowerBudget's domain draw against its budget (operator).",
        ),
        _panel(
            "Desired replicas (autoscaler)",
            [
                (
                    'sum by (modelservice, tier) (kubetier_operator_desired_replicas{tier=~"$tier"})',
                    "{{modelservice}}/{{tier}}",
                ),
                (
                    'sum by (tier, direction) (increase(kubetier_operator_scale_decisions_total{tier=~"$tier"}'
                    "[$__rate_interval]))",
                    "scaled {{direction}} {{tier}}",
                ),
            ],
            "short",
            "Serving replicas the operator's autoscaler wants per tier, and its scale-up/down decisions.",
        ),
        _panel(
            "PowerBudget level and capped pods",
            [
                (
                    'max by (powerbudget) (kubetier_operator_power_level{level="capping"})'
                    ' + 2 * max by (powerbudget) (kubetier_operator_power_level{level="braking"})',
                    "{{powerbudget}} level (0 normal, 1 capping, 2 braking)",
                ),
                ("max by (powerbudget) (kubetier_operator_power_capped_pods)", "{{powerbudget}} capped pods"),
            ],
            "short",
            "Each PowerBudget's control level as the operator decided it, and the serving pods under a cap.",
        ),
        _panel(
            "Operator reconciles",
            [
                (
                    "sum by (controller, result) (rate(kubetier_operator_reconciles_total[$__rate_interval]))",
                    "{{controller}} {{result}}",
                ),
                (
                    "sum by (controller, kind) (rate(kubetier_operator_reconcile_errors_total[$__rate_interval]))",
                    "{{controller}} error ({{kind}})",
                ),
            ],
            "ops",
            "Reconciles (ModelService) and control ticks (PowerBudget) per second by result; errors by kind.",
        ),
        _panel(
            "Operator reconcile duration, spot notices",
            [
                (
                    "histogram_quantile(0.99, sum by (controller, le) "
                    "(rate(kubetier_operator_reconcile_duration_seconds_bucket[$__rate_interval])))",
                    "{{controller}} p99",
                ),
                (
                    "sum by (source) (increase(kubetier_operator_spot_drained_pods_total[$__rate_interval]))",
                    "pods drained ({{source}} notice)",
                ),
            ],
            "s",
            "99th percentile of reconcile time per controller; serving pods drained ahead of spot preemptions.",
        ),
    ]
    for i, panel in enumerate(specs):
        panel["id"] = i + 1
        panel["gridPos"] = {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)}
    return specs


def _variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "current": {"text": "All", "value": "$__all"},
        "allValue": ".*",
        "refresh": 2,
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": TITLE,
        "tags": ["kubetier", "llm", "slo"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "prometheus"},
                },
                _variable("model", "label_values(kubetier_router_requests_total, model)"),
                _variable("tier", 'label_values(kubetier_router_requests_total{model=~"$model"}, tier)'),
            ]
        },
        "panels": panels(),
    }


def validate(doc: dict[str, Any]) -> list[str]:
    """Structural checks Grafana's importer relies on; returns the problems found."""
    problems = []
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in doc:
            problems.append(f"missing {key}")
    ids = [p.get("id") for p in doc.get("panels", [])]
    if len(set(ids)) != len(ids) or None in ids:
        problems.append(f"panel ids must be unique and set: {ids}")
    variables = {v["name"] for v in doc.get("templating", {}).get("list", [])}
    cells: set[tuple[int, int]] = set()
    for p in doc.get("panels", []):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")) or g["x"] + g["w"] > 24:
            problems.append(f"{where}: gridPos must be integers within 24 columns: {g}")
        else:
            for dx in range(g["w"]):
                for dy in range(g["h"]):
                    cell = (g["x"] + dx, g["y"] + dy)
                    if cell in cells:
                        problems.append(f"{where}: overlaps another panel at {cell}")
                        break
                    cells.add(cell)
        if not p.get("targets"):
            problems.append(f"{where}: no queries")
        refs = [t.get("refId") for t in p.get("targets", [])]
        if len(set(refs)) != len(refs):
            problems.append(f"{where}: duplicate refIds {refs}")
        for t in p.get("targets", []):
            for var in ("$model", "$tier", "$datasource"):
                if var in json.dumps(t) and var.lstrip("$") not in variables:
                    problems.append(f"{where}: uses undefined variable {var}")
    return problems


def queries(doc: dict[str, Any]) -> list[str]:
    """Every PromQL query with Grafana's variables replaced by values Prometheus accepts."""
    out = []
    for p in doc["panels"]:
        for t in p["targets"]:
            out.append(t["expr"].replace("$__rate_interval", "5m").replace("$model", ".*").replace("$tier", ".*"))
    return out
