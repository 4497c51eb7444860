"""Prometheus recording and alerting rules for kubetier (a PrometheusRule's ``spec``).

SLO attainment burn rates follow the multi-window, multi-burn-rate recipe of Google's SRE
workbook ("Alerting on SLOs", table 5-8): page when the error budget burns 14.4x too fast
over 1 h (confirmed over 5 m) or 6x over 6 h (confirmed over 30 m); open a ticket at 1x
over 3 d (confirmed over 6 h). A miss is what kubetier.policy.attainment counts: a request
that did not meet its tier's TTFT and every token deadline, including refused (429) and
failed ones. The objective per tier (the ModelService's ``attainmentPercent``) is not a
metric the router exports, so it is a parameter here (default 90%, per-tier overrides).

Other alerts read the router's own metrics or the operator's (reconcile errors and
duration, PowerBudget braking, an operator that is not scraped at all), except standby (kube-state-metrics'
Deployment gauges), spot notices (kube-state-metrics' node taints) and power
(``kubetier_engine_power_watts`` from the engine simulator and node agent, or NVIDIA DCGM's
``DCGM_FI_DEV_POWER_USAGE`` on real GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Outcomes that count in attainment's denominator (kubetier.router.metrics aggregation).
COUNTED_OUTCOMES = "ok|rejected|error|upstream_error"
# Taints that announce a spot interruption: AWS Node Termination Handler, GKE.
SPOT_NOTICE_TAINTS = (
    "aws-node-termination-handler/spot-itn",
    "aws-node-termination-handler/rebalance-recommendation",
    "cloud.google.com/impending-node-termination",
)
# (alert severity, long window, short window, burn-rate factor, for)
BURN_WINDOWS = (
    ("critical", "1h", "5m", 14.4, "2m"),
    ("critical", "6h", "30m", 6.0, "15m"),
    ("warning", "3d", "6h", 1.0, "1h"),
)
RATE_WINDOWS = ("5m", "30m", "1h", "6h", "3d")
# A miss ratio cannot pass 1: with a 90% objective a 14.4x burn would need 144% misses.
# Thresholds the ratio cannot reach are capped here (90% of requests missing).
MAX_THRESHOLD = 0.9


@dataclass(frozen=True)
class AlertSettings:
    default_objective: float = 0.90
    tier_objectives: dict[str, float] = field(default_factory=dict)
    rejecting_ratio: float = 0.05
    power_watts: float = 650.0
    operator_error_ratio: float = 0.1
    operator_slow_seconds: float = 5.0

    def __post_init__(self) -> None:
        for name, value in [("default", self.default_objective), *self.tier_objectives.items()]:
            if not 0 < value < 1:
                raise ValueError(f"objective for {name} must be between 0 and 1 (exclusive), got {value}")


def _error_ratio(window: str) -> str:
    good = f"sum by (model, tier) (rate(kubetier_router_slo_met_total[{window}]))"
    total = f'sum by (model, tier) (rate(kubetier_router_requests_total{{outcome=~"{COUNTED_OUTCOMES}"}}[{window}]))'
    # A tier none of whose requests met its SLO has no slo_met series at all (a labelled
    # counter appears on its first increment): count it as zero good requests, not as absent.
    return f"1 - (({good} or 0 * {total}) / {total})"


def recording_rules() -> list[dict[str, Any]]:
    return [{"record": f"kubetier:tier_slo_errors:ratio_rate{w}", "expr": _error_ratio(w)} for w in RATE_WINDOWS]


def _tier_selectors(settings: AlertSettings) -> list[tuple[str, float]]:
    """(label matcher, objective): one per overridden tier, one for all the others."""
    out = [(f'tier="{name}"', obj) for name, obj in sorted(settings.tier_objectives.items())]
    if settings.tier_objectives:
        others = "|".join(sorted(settings.tier_objectives))
        out.append((f'tier!~"{others}"', settings.default_objective))
    else:
        out.append(("", settings.default_objective))
    return out


def burn_rate_alerts(settings: AlertSettings) -> list[dict[str, Any]]:
    rules = []
    for matcher, objective in _tier_selectors(settings):
        budget = round(1 - objective, 6)
        sel = f"{{{matcher}}}" if matcher else ""
        for severity, long_w, short_w, factor, for_ in BURN_WINDOWS:
            threshold = round(min(factor * budget, MAX_THRESHOLD), 6)
            rules.append(
                {
                    "alert": "KubetierTierAttainmentBurnRate"
                    if severity == "critical"
                    else "KubetierTierAttainmentBudgetBurn",
                    "expr": (
                        f"kubetier:tier_slo_errors:ratio_rate{long_w}{sel} > {threshold}\n"
                        f"and\nkubetier:tier_slo_errors:ratio_rate{short_w}{sel} > {threshold}"
                    ),
                    "for": for_,
                    "labels": {"severity": severity, "window": long_w},
                    "annotations": {
                        "summary": "Tier {{ $labels.tier }} of {{ $labels.model }} misses its SLO too often",
                        "description": (
                            f"{{{{ $value | humanizePercentage }}}} of requests missed the tier's TTFT/TPOT targets "
                            f"over {long_w} (objective {objective:.1%} met, so the error budget burns {factor:g}x "
                            "too fast)."
                        ),
                    },
                }
            )
    return rules


def operational_alerts(settings: AlertSettings) -> list[dict[str, Any]]:
    taints = "|".join(SPOT_NOTICE_TAINTS)
    return [
        {
            "alert": "KubetierRouterRejecting",
            "expr": (
                "sum by (model, tier) (rate(kubetier_router_rejections_total[5m]))\n/\n"
                "sum by (model, tier) (rate(kubetier_router_requests_total[5m]))\n"
                f"> {settings.rejecting_ratio}"
            ),
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "The router refuses {{ $value | humanizePercentage }} of tier {{ $labels.tier }} requests",
                "description": "429s: no server of the tier (or a tighter one) could meet the SLO; add replicas or raise replicas.max.",
            },
        },
        {
            "alert": "KubetierEngineNotReady",
            "expr": "max by (model, tier, server) (kubetier_router_server_ready) == 0",
            "for": "5m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Engine {{ $labels.server }} of {{ $labels.model }}/{{ $labels.tier }} is not ready",
                "description": "The router has not been able to use this engine for 5 minutes (health or metrics failing).",
            },
        },
        {
            "alert": "KubetierTierHasNoReadyEngine",
            "expr": ("sum by (model, tier) (max by (model, tier, server) (kubetier_router_server_ready)) == 0"),
            "for": "2m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "Tier {{ $labels.tier }} of {{ $labels.model }} has no ready engine",
                "description": "Every request of this tier is spilled, queued or refused.",
            },
        },
        {
            "alert": "KubetierStandbyExhausted",
            "expr": (
                'kube_deployment_spec_replicas{deployment=~".+-standby"} > 0\n'
                'unless on (namespace, deployment)\nkube_deployment_status_replicas_available{deployment=~".+-standby"} > 0'
            ),
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "No warm standby replica left in {{ $labels.namespace }}/{{ $labels.deployment }}",
                "description": "A burst or a spot interruption now waits for a cold start (weights loading). Needs kube-state-metrics.",
            },
        },
        {
            "alert": "KubetierPowerOverThreshold",
            "expr": (
                f"max by (pod) (kubetier_engine_power_watts) > {settings.power_watts:g}\n"
                f"or\nmax by (Hostname, gpu) (DCGM_FI_DEV_POWER_USAGE) > {settings.power_watts:g}"
            ),
            "for": "5m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "GPU power {{ $value | humanize }} W over the threshold",
                "description": f"Drawing more than {settings.power_watts:g} W for 5 minutes; check the PowerBudget caps.",
            },
        },
        {
            "alert": "KubetierSpotInterruptionNotice",
            "expr": f'max by (node, key) (kube_node_spec_taint{{key=~"{taints}"}}) > 0',
            "for": "0m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Spot interruption notice on node {{ $labels.node }}",
                "description": "Engines on this node are about to lose their GPU; in-flight streams are resumed elsewhere. Needs kube-state-metrics.",
            },
        },
    ]


def operator_alerts(settings: AlertSettings) -> list[dict[str, Any]]:
    """Alerts on the operator's own metrics (kubetier.operator.metrics). Conflicts (HTTP
    409) are left out of the error ratio: kopf retries them and they are expected when two
    writers touch one object."""
    errors = 'sum by (controller) (rate(kubetier_operator_reconcile_errors_total{kind!="conflict"}[10m]))'
    total = "sum by (controller) (rate(kubetier_operator_reconciles_total[10m]))"
    return [
        {
            "alert": "KubetierOperatorReconcileErrors",
            "expr": f"{errors}\n/\n{total}\n> {settings.operator_error_ratio}",
            "for": "15m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $value | humanizePercentage }} of the {{ $labels.controller }} controller's reconciles fail",
                "description": "The operator cannot apply changes (API errors, unreachable API server, unsynced watches); see its log.",
            },
        },
        {
            "alert": "KubetierOperatorReconcileSlow",
            "expr": (
                "histogram_quantile(0.99, sum by (controller, le) "
                "(rate(kubetier_operator_reconcile_duration_seconds_bucket[10m])))\n"
                f"> {settings.operator_slow_seconds:g}"
            ),
            "for": "15m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "The {{ $labels.controller }} controller's p99 reconcile takes {{ $value | humanizeDuration }}",
                "description": "Scale-ups and spot replacements wait this long; the API server may be overloaded.",
            },
        },
        {
            "alert": "KubetierOperatorAbsent",
            "expr": "absent(kubetier_operator_info)",
            "for": "10m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "No kubetier operator is scraped",
                "description": "Nothing reconciles ModelServices or PowerBudgets; check the operator pod and its PodMonitor.",
            },
        },
        {
            "alert": "KubetierPowerBraking",
            "expr": 'max by (powerbudget) (kubetier_operator_power_level{level="braking"}) == 1',
            "for": "1m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "PowerBudget {{ $labels.powerbudget }} is braking",
                "description": "The domain drew above its hard cap: every serving pod is capped hard until the draw falls.",
            },
        },
    ]


def rule_groups(settings: AlertSettings | None = None) -> dict[str, Any]:
    """The ``groups`` document (a rules file for Prometheus/promtool and a PrometheusRule spec)."""
    settings = settings or AlertSettings()
    return {
        "groups": [
            {"name": "kubetier.slo.recording", "interval": "30s", "rules": recording_rules()},
            {"name": "kubetier.slo.alerts", "rules": burn_rate_alerts(settings)},
            {"name": "kubetier.operations", "rules": operational_alerts(settings)},
            {"name": "kubetier.operator", "rules": operator_alerts(settings)},
        ]
    }
