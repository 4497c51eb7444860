"""What a person reads: the terminal table, the JSON result and the PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .runner import GoodputResult, RunResult


def _fmt(v: float, nd: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def summary_table(
    scenario: str,
    bound_rps: float,
    results: dict[str, GoodputResult],
    common: dict[str, RunResult],
    common_rps: float,
    tier_names: list[str],
    targets: list[float],
    partition_rps: float | None = None,
) -> str:
    baselines = [p for p in results if p != "kubetier"]
    best = max((results[p].goodput_rps for p in baselines), default=0.0)
    lines = [
        f"scenario {scenario}: goodput = highest request rate at which every tier meets its attainment target",
        f"upper bound (provable, sim/bound.py): {bound_rps:.2f} req/s; best static partition: "
        + (f"{partition_rps:.2f} req/s" if partition_rps else "not searched"),
        "",
    ]
    head = f"{'policy':<17}{'goodput req/s':>14}{'x best base':>12}{'% of bound':>11}{'% > part.':>10}"
    tiers_head = "".join(f"{n[:12]:>13}" for n in tier_names)
    lines.append(head + "   attainment % at " + f"{common_rps:.2f} req/s (kubetier's goodput): ")
    lines.append(" " * len(head) + tiers_head)
    for p, g in results.items():
        ratio = g.goodput_rps / best if best > 0 else float("inf")
        frac = 100.0 * g.goodput_rps / bound_rps if bound_rps > 0 else float("nan")
        r = common.get(p)
        att = "".join(f"{_fmt(t.attainment_deadline):>13}" for t in r.tiers) if r else ""
        above = 100.0 * (g.goodput_rps / partition_rps - 1.0) if partition_rps else float("nan")
        lines.append(f"{p:<17}{g.goodput_rps:>14.2f}{ratio:>12.2f}{frac:>11.1f}{_fmt(above):>10}" + " " * 3 + att)
    lines.append(" " * len(head) + "".join(f"{'target ' + _fmt(t, 0):>13}" for t in targets))
    return "\n".join(lines)


def tier_table(run: RunResult) -> str:
    lines = [
        f"{run.policy} at {run.rate_rps:.2f} req/s: per tier (deadline / ttft+tpot attainment %, ms percentiles)",
        f"  {'tier':<12}{'reqs':>7}{'deadln%':>9}{'simple%':>9}{'ttft p50':>9}{'p99':>8}{'tpot p50':>9}{'p99':>7}"
        f"{'queue p99':>10}{'spilled':>8}{'rejected':>9}",
    ]
    for t in run.tiers:
        lines.append(
            f"  {t.name:<12}{t.requests:>7}{_fmt(t.attainment_deadline):>9}{_fmt(t.attainment_ttft_tpot):>9}"
            f"{_fmt(t.ttft_p50_ms, 0):>9}{_fmt(t.ttft_p99_ms, 0):>8}{_fmt(t.tpot_p50_ms):>9}{_fmt(t.tpot_p99_ms):>7}"
            f"{_fmt(t.queue_p99_ms, 0):>10}{t.spilled:>8}{t.rejected:>9}"
        )
    lines.append(
        f"  GPU-seconds {run.gpu_seconds:.0f}, arrivals over {run.duration_s:.0f} s (simulated until "
        f"{run.makespan_s:.1f} s), {run.measured_requests} measured of {run.requests} requests "
        f"simulated in {run.wall_s:.2f} s ({run.requests / max(run.wall_s, 1e-9):,.0f} req/s)"
    )
    return "\n".join(lines)


def _json_default(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    raise TypeError(type(o))


def _clean(o):
    if isinstance(o, float):
        return None if (math.isnan(o) or math.isinf(o)) else o
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_clean(v) for v in o]
    return o


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(_clean(doc), indent=2, default=_json_default) + "\n")


def write_plots(
    out: Path,
    tier_names: list[str],
    targets: list[float],
    results: dict[str, GoodputResult],
    curves: dict[str, list[RunResult]],
    bound_rps: float,
    gradient: dict[str, RunResult],
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    paths = []
    # 1. attainment vs rate, one panel per tier
    fig, axes = plt.subplots(1, len(tier_names), figsize=(4.5 * len(tier_names), 3.6), squeeze=False)
    for i, name in enumerate(tier_names):
        ax = axes[0][i]
        for policy, runs in curves.items():
            pts = sorted((r.rate_rps, r.tiers[i].attainment_deadline) for r in runs if not r.aborted)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
        ax.axhline(targets[i], color="grey", linestyle="--", linewidth=1)
        if bound_rps > 0:
            ax.axvline(bound_rps, color="black", linestyle=":", linewidth=1)
        ax.set_title(f"tier {name}")
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel("SLO attainment (%)")
        ax.set_ylim(0, 101)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    p = out / "attainment_vs_rate.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    # 2. goodput per policy against the bound
    fig, ax = plt.subplots(figsize=(6, 3.6))
    names = list(results)
    vals = [results[n].goodput_rps for n in names]
    ax.bar(names, vals, color=["tab:green" if n == "kubetier" else "tab:grey" for n in names])
    if bound_rps > 0:
        ax.axhline(bound_rps, color="black", linestyle=":", label=f"upper bound {bound_rps:.1f}")
        ax.legend(fontsize=8)
    ax.set_ylabel("goodput (req/s)")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    p = out / "goodput.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    # 3. load gradient: requests served per server (servers in fleet order, grouped by tier)
    fig, axes = plt.subplots(1, len(gradient), figsize=(5 * len(gradient), 3.4), squeeze=False)
    for ax, (policy, run) in zip(axes[0], gradient.items()):
        # Tiers in spec order, the busiest server of each first: the gradient is the
        # slope within a tier (most-loaded-feasible routing drains the tail servers).
        order = sorted(
            range(len(run.server_busy)), key=lambda k: (tier_names.index(run.server_tier[k]), -run.server_busy[k])
        )
        ax.bar(
            range(len(order)),
            [run.server_busy[k] * 100 for k in order],
            color=[f"C{tier_names.index(run.server_tier[k]) % 10}" for k in order],
        )
        ax.legend(
            handles=[
                Patch(color=f"C{i % 10}", label=name) for i, name in enumerate(tier_names) if name in run.server_tier
            ],
            fontsize=7,
            loc="lower left",
        )
        ax.set_title(f"{policy} at {run.rate_rps:.1f} req/s")
        ax.set_xlabel("server (grouped by tier, most loaded first)")
        ax.set_ylabel("busy (%)")
        ax.set_ylim(0, 101)
    fig.tight_layout()
    p = out / "load_gradient.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
