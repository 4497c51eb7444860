"""`kubetier simulate autoscale`: the autoscaler and pre-warm policies against baselines."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .autoscale import LOAD_PRESETS, POLICIES, WORKLOADS, compare, parse_load_time, plot, table
from .workload import TraceMissingError

_EPILOG = f"""\
Policies: {", ".join(POLICIES)} (see kubetier/sim/autoscale.py). static-peak runs every
tier at the most serving servers the kubetier run used, all the time.

Model-load and wake times: seconds (fixed) or a preset, LogNormal fitted to published
figures: {"; ".join(f"{k} = {v.label}" for k, v in LOAD_PRESETS.items())}.

Workloads: diurnal (interactive: sinusoidal day over the run, amplitude 0.9; batch: a
90 s job every ~15 min), bursty (interactive: Gamma arrivals, CV 4; same batch jobs),
azure (Azure LLM 2023 conversation trace -> interactive, code trace -> batch, looped;
--rate scales time).

Prints the table and writes DIR/autoscale_<workload>.json and one PNG per policy of
replicas per tier over time against the arrival rate.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubetier simulate autoscale",
        description="Compare kubetier's per-tier autoscaler and pre-warm policy with a static fleet sized "
        "for the peak, a Knative-style concurrency autoscaler, a fixed 10-minute keep-alive and no "
        "pre-warm: GPU-hours, cold starts, idle GPU-seconds and per-tier attainment.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workload", choices=WORKLOADS, default="diurnal", help="default: diurnal")
    p.add_argument("--hours", type=float, default=2.0, help="simulated hours (default 2)")
    p.add_argument(
        "--rate",
        type=float,
        default=8.0,
        help="interactive mean arrival rate, req/s (diurnal, bursty); time scale for azure (default 8)",
    )
    p.add_argument("--model-load", default="8b", help="model-load time: seconds or a preset (default 8b)")
    p.add_argument("--wake", default="wake-large", help="standby wake time: seconds or a preset (default wake-large)")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset (default: all)")
    p.add_argument("--profile", default="llama-3.1-8b-h100", help="latency profile (built-in name or YAML path)")
    p.add_argument("--gpus", type=int, default=64, help="GPUs in the cluster (bounds new servers; default 64)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--traces-dir", type=Path, default=None, help="folder holding the public traces (azure)")
    p.add_argument("--output", type=Path, default=None, help="directory for the JSON result and PNG plots")
    p.add_argument("--no-plots", action="store_true")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        load = parse_load_time(args.model_load)
        wake = parse_load_time(args.wake)
    except ValueError as exc:
        print(f"kubetier simulate autoscale: {exc}", file=sys.stderr)
        return 2
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        print(
            f"kubetier simulate autoscale: --policies: unknown {unknown} (known: {', '.join(POLICIES)})",
            file=sys.stderr,
        )
        return 2
    if args.hours <= 0 or args.rate <= 0 or args.gpus < 1:
        print("kubetier simulate autoscale: --hours and --rate must be > 0, --gpus >= 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        c = compare(
            args.workload,
            args.hours * 3600.0,
            load,
            wake,
            policies,
            profile=args.profile,
            seed=args.seed,
            rate=args.rate,
            gpus=args.gpus,
            traces_dir=args.traces_dir,
            progress=True,
        )
    except (TraceMissingError, ValueError) as exc:
        print(f"kubetier simulate autoscale: {exc}", file=sys.stderr)
        return 2
    print(table(c))
    doc = c.to_json()
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        path = args.output / f"autoscale_{args.workload}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {path}")
        if not args.no_plots:
            for png in plot(c, args.output):
                print(f"wrote {png}")
    else:
        print(json.dumps(doc["goals"]))
    print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
