"""`kubetier simulate`: replay a scenario through kubetier's routing policy and baselines."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .scenario import ScenarioError, load_scenario, shipped_scenarios

_FORMAT_HELP = """\
Scenario format (YAML, validated; every error names the field). Full example and
field list: the docstring of kubetier/sim/scenario.py (`python -c "import
kubetier.sim.scenario as s; print(s.__doc__)"`). In short:

  name, seed, profile (built-in latency profile or YAML path)
  tiers:    [{name, ttftMs, tpotMs, attainmentPercent, priority, meanOutputTokens, onLate}]
  workload: {startS, durationS, maxRequests, sources: [{trace: NAME|PATH | synthetic: {...},
             tier: NAME | mix: {tier: weight}}]}
  fleet:    {servers: {tier: count} | pool: N, modelLoadS}
  policies: [kubetier, round-robin, least-loaded, static-partition, two-class]
  goodput:  {minScale, maxScale, iterations, curveScales}

Traces: known names ship with kubetier (gzip-compressed, in kubetier/sim/traces/ with
their licences); --traces-dir or $KUBETIER_TRACES_DIR reads them from another folder
(plain or .gz): azure_llm_2023_code, azure_llm_2023_conv, mooncake_conversation.

Commands: `kubetier simulate --scenario NAME_OR_PATH --output DIR`,
`kubetier simulate list`, `kubetier simulate bench --output FILE`,
`kubetier simulate generate --seed N [--output FILE]` (a random realistic scenario),
`kubetier simulate spot --help` (spot policies: cost and attainment).
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubetier simulate",
        description="Fleet simulator: replay a scenario (traces or synthetic load) through kubetier's "
        "SLO routing policy and the baselines; report per-tier attainment, goodput, the ratio to the "
        "best baseline and the fraction of a provable upper bound and the gain over the best static partition.",
        epilog=_FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario",
        default="azure-by-source",
        help="shipped scenario name or YAML path (default: azure-by-source; `kubetier simulate list`)",
    )
    p.add_argument("--output", type=Path, default=None, help="directory for result.json and the PNG plots")
    p.add_argument(
        "--traces-dir",
        type=Path,
        default=None,
        help="folder holding the public traces (default: the ones shipped with kubetier)",
    )
    p.add_argument("--policies", default=None, help="comma-separated subset of the scenario's policies")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--no-partition", action="store_true", help="skip the best-static-partition search (many short runs)"
    )
    return p


def main(argv: list[str]) -> int:
    if argv and argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "generate":
        from .generate import main as generate_main

        return generate_main(argv[1:])
    if argv and argv[0] == "spot":
        from .spot_compare import main as spot_main

        return spot_main(argv[1:])
    if argv and argv[0] == "list":
        for name in shipped_scenarios():
            sc = load_scenario(name)
            print(f"{name:<24} {' '.join(sc.description.split())[:100]}")
        return 0
    args = _parser().parse_args(argv)
    try:
        sc = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"kubetier simulate: {exc}", file=sys.stderr)
        return 2
    from .compare import compare
    from .workload import TraceMissingError

    policies = sc.policies
    if args.policies:
        wanted = [p.strip() for p in args.policies.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in sc.policies]
        if unknown:
            print(
                f"kubetier simulate: --policies: {unknown} not in the scenario's policies {sc.policies}",
                file=sys.stderr,
            )
            return 2
        policies = wanted
    t0 = time.perf_counter()
    try:
        compare(
            sc,
            policies,
            args.traces_dir,
            args.output,
            plots=not args.no_plots,
            quiet=args.quiet,
            partition=not args.no_partition,
        )
    except TraceMissingError as exc:
        print(f"kubetier simulate: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"\ndone in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
