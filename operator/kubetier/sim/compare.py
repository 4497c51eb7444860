"""The whole comparison of one scenario: bound, goodput per policy, common-rate runs, outputs."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from kubetier.policy.latency import load_profile

from . import report
from .partition import best_partition
from .runner import (
    RunResult,
    available_policies,
    bound_scale,
    run_once,
    search_goodput,
    workload_shape,
)
from .scenario import Scenario


def compare(
    sc: Scenario,
    policies: list[str],
    traces_dir: Path | None,
    out: Path | None,
    plots: bool = True,
    quiet: bool = False,
    partition: bool = True,
) -> dict:
    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    model = load_profile(sc.profile)
    shape = workload_shape(sc, traces_dir)
    b_scale = bound_scale(sc, model, traces_dir)
    bound_rps = b_scale * shape.rate_rps
    say(
        f"{sc.name}: {shape.requests} measured requests in [{shape.measure_from_s:.0f}, {shape.measure_until_s:.0f}) s "
        f"of a {shape.duration_s:.0f} s window ({shape.rate_rps:.2f} req/s at scale 1); upper bound {bound_rps:.2f} req/s"
    )
    policies, missing = available_policies(policies)
    for p in missing:
        say(f"note: policy {p!r} skipped: its routing kind is not in kubetier.policy.routing.KINDS")
    tier_requests = [t["requests"] for t in shape.per_tier]
    names = [t.name for t in sc.tiers]
    targets = [t.attainment_percent for t in sc.tiers]
    start = 0.25 * b_scale if b_scale > 0 else 1.0

    results = {}
    for p in policies:

        def on_run(r: RunResult, p=p) -> None:
            verdict = "pass" if r.meets_targets else ("fail (stopped early)" if r.aborted else "fail")
            att = " ".join(f"{t.name}={t.attainment_deadline:.0f}%" for t in r.tiers)
            say(f"  [{p}] {r.rate_rps:8.2f} req/s  {verdict:<20} {att}  ({r.wall_s:.2f} s)")

        results[p] = search_goodput(sc, p, model, shape.rate_rps, traces_dir, start, tier_requests, on_run)
        say(f"[{p}] goodput {results[p].goodput_rps:.2f} req/s")

    # Every policy at kubetier's goodput rate (full runs): who else holds the SLOs there?
    ref = results.get("kubetier") or next(iter(results.values()))
    common_scale = ref.goodput_scale or sc.goodput.min_scale
    common = {}
    for p in policies:
        # reuse the search's full run at exactly this scale when there is one
        done = [r for r in results[p].runs if r.rate_scale == round(common_scale, 6) and not r.aborted]
        common[p] = done[0] if done else run_once(sc, p, round(common_scale, 6), model, traces_dir)
    for r in common.values():
        r.rate_rps = common_scale * shape.rate_rps

    # Attainment-vs-rate curves: the search's full (not stopped-early) runs plus curve points.
    curves: dict[str, list[RunResult]] = {}
    extra = sc.goodput.curve_scales or []
    for p in policies:
        runs = [r for r in results[p].runs if not r.aborted] + [common[p]]
        for s in extra:
            r = run_once(sc, p, s, model, traces_dir)
            r.rate_rps = s * shape.rate_rps
            runs.append(r)
        curves[p] = runs

    part = None
    if partition:
        hi = max([g.goodput_scale for g in results.values()] + [sc.goodput.min_scale]) * 2.0
        part = best_partition(sc, model, traces_dir, hi_scale=min(hi, b_scale or hi), lo_scale=sc.goodput.min_scale / 4)
        say(f"[best static partition] {part.scale * shape.rate_rps:.2f} req/s with {part.servers} ({part.runs} runs)")
    part_rps = part.scale * shape.rate_rps if part is not None else None
    table = report.summary_table(
        sc.name, bound_rps, results, common, common_scale * shape.rate_rps, names, targets, part_rps
    )
    print(table)
    print()
    print(report.tier_table(common[ref.policy]))
    baselines = [p for p in results if p != "kubetier"]
    best_base = max(baselines, key=lambda p: results[p].goodput_rps, default=None)
    doc = {
        "scenario": sc.model_dump(by_alias=True),
        "workload": asdict(shape),
        "upperBound": {
            "rps": bound_rps,
            "scale": b_scale,
            "kind": "work-conserving necessary condition (sim/bound.py)",
        },
        "bestPartition": (
            {"rps": part_rps, "scale": part.scale, "servers": part.servers, "runs": part.runs}
            if part is not None
            else None
        ),
        "policies": {
            p: {
                "goodputRps": g.goodput_rps,
                "goodputScale": g.goodput_scale,
                "ratioToBestBaseline": (
                    g.goodput_rps / results[best_base].goodput_rps
                    if best_base and results[best_base].goodput_rps > 0
                    else None
                ),
                "fractionOfBound": g.goodput_rps / bound_rps if bound_rps > 0 else None,
                "aboveBestPartition": (g.goodput_rps / part_rps - 1.0 if part_rps else None),
                "simulatedDurationS": next(
                    (r.duration_s for r in g.runs if r.rate_scale == round(g.goodput_scale, 6)), None
                ),
                "searchRuns": [r.to_json() for r in g.runs],
                "atCommonRate": common[p].to_json(),
            }
            for p, g in results.items()
        },
        "bestBaseline": best_base,
        "commonRateRps": common_scale * shape.rate_rps,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(out / "result.json", doc)
        written = [out / "result.json"]
        if plots:
            gradient = {p: common[p] for p in ("kubetier", "least-loaded") if p in common}
            written += report.write_plots(out, names, targets, results, curves, bound_rps, gradient)
        say("wrote " + ", ".join(str(w) for w in written))
    return doc
