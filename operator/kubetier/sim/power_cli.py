"""`kubetier simulate power`: POLCA power-capped oversubscription vs. no oversubscription and uniform capping."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .power import ARMS, PowerSimSpec, compare_power, table, write


def _parser() -> argparse.ArgumentParser:
    d = PowerSimSpec()
    p = argparse.ArgumentParser(
        prog="kubetier simulate power",
        description="One power domain, four arms on the same trace scenario: nominal (budget/TDP servers), "
        "oversubscribed without capping, oversubscribed with uniform capping, oversubscribed with POLCA "
        "(lowest priority / loosest TPOT capped first). Prints the table, then the JSON result. "
        "`kubetier simulate power sweep --help`: several scenarios and threshold settings in one table.",
    )
    p.add_argument("--scenario", default=d.scenario, help="shipped scenario name or YAML path (default: %(default)s)")
    p.add_argument("--traces-dir", type=Path, default=None, help="folder holding the public traces")
    p.add_argument("--output", type=Path, default=None, help="directory for power-result.json and the PNG plots")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of %(default)s")
    p.add_argument("--json-only", action="store_true", help="print only the JSON result")
    for f in dataclasses.fields(PowerSimSpec):
        if f.name == "scenario":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", help="(default: off)")
            continue
        kind = int if f.type in ("int", int) else float
        p.add_argument(flag, type=kind, default=getattr(d, f.name), help="(default: %(default)s)")
    return p


def main(argv: list[str]) -> int:
    if argv and argv[0] == "sweep":
        from .power_sweep import main as sweep_main

        return sweep_main(argv[1:])
    args = _parser().parse_args(argv)
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        print(f"kubetier simulate power: --arms: unknown {unknown}; known: {', '.join(ARMS)}", file=sys.stderr)
        return 2
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PowerSimSpec)}
    try:
        spec = PowerSimSpec(**values)
        result = compare_power(spec, args.traces_dir, arms)
    except (ValueError, FileNotFoundError) as exc:
        print(f"kubetier simulate power: {exc}", file=sys.stderr)
        return 2
    if not args.json_only:
        print(table(result))
        print()
    printable = {k: v for k, v in result.items() if k != "arms"}
    printable["arms"] = [
        {k: v for k, v in a.items() if k not in ("series", "attainment_series")} for a in result["arms"]
    ]
    print(json.dumps(printable, indent=1))
    if args.output is not None:
        for path in write(result, args.output, plots=not args.no_plots):
            print(f"wrote {path}", file=sys.stderr)
    return 0
