"""`kubetier simulate bench`: simulated requests per wall-second, and where the time goes.

A synthetic three-tier workload (Poisson arrivals, conversation-like lengths) offered at
a fraction of the fleet's fluid estimate, run through the kubetier policy on one core.
Prints the rate, the peak memory and the top cProfile entries; writes JSON. It is a
benchmark: it asserts nothing about wall-clock time.

``--compare least-loaded`` (the default) runs the same arrivals through that baseline in
the same process right after, and reports both rates, their ratio (absolute rates vary
2x between machines and with other tenants; the ratio much less) and every tier's
attainment under both policies side by side (at 1,000 servers this is the "every tier at
least least-loaded's attainment, from an empty fleet" check).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import sys
import time
from pathlib import Path

from kubetier.policy.latency import load_profile

from . import native, runner
from .scenario import parse_scenario


def bench_scenario(servers: int, requests: int, load: float, profile: str) -> tuple:
    per = servers // 4
    tiers = [
        {"name": "interactive", "ttftMs": 500, "tpotMs": 25, "meanOutputTokens": 128},
        {"name": "standard", "ttftMs": 1500, "tpotMs": 50, "meanOutputTokens": 256},
        {"name": "batch", "ttftMs": 8000, "tpotMs": 150, "meanOutputTokens": 256},
    ]
    doc = {
        "name": "bench",
        "seed": 11,
        "profile": profile,
        "tiers": tiers,
        "workload": {
            "durationS": 1.0,  # replaced below once the offered rate is known
            "warmupS": 0,
            "cooldownS": 0,
            "sources": [
                {
                    "synthetic": {
                        "arrival": "poisson",
                        "rate": 1.0,
                        "prompt": {"dist": "lognormal", "mean": 1100, "sd": 900, "min": 16, "max": 16000},
                        "output": {"dist": "lognormal", "mean": 220, "sd": 200, "min": 1, "max": 2000},
                    },
                    "mix": {"interactive": 0.3, "standard": 0.4, "batch": 0.3},
                }
            ],
        },
        "fleet": {"servers": {"interactive": per, "standard": per, "batch": servers - 2 * per}},
    }
    model = load_profile(profile)
    # Offered rate: `load` times the fluid estimate (the bound of the mix's mean lengths).
    rows = [
        (t["name"], share, 1100.0, 220.0, t["tpotMs"] / 1000.0, t["ttftMs"] / 1000.0)
        for t, share in zip(tiers, (0.3, 0.4, 0.3))
    ]
    from .bound import fluid_estimate

    bound = fluid_estimate(model, servers, rows)
    rate = max(0.01, load * bound)
    # The offered rate is the source's own rate (scale 1), over the time `requests` take.
    doc["workload"]["durationS"] = requests / rate
    doc["workload"]["sources"][0]["synthetic"]["rate"] = rate
    return parse_scenario(doc, "bench"), model, rate, bound


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="kubetier simulate bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--servers", type=int, default=64)
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--load", type=float, default=0.6, help="offered rate as a fraction of the fluid estimate")
    p.add_argument("--profile", default="llama-3.1-8b-h100")
    p.add_argument("--policy", default="kubetier")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile pass")
    p.add_argument(
        "--compare",
        default="least-loaded",
        help="baseline run on the same arrivals after the policy, for ratios (default least-loaded; 'none' skips it)",
    )
    p.add_argument("--output", type=Path, default=None, help="JSON result file")
    args = p.parse_args(argv)

    sc, model, rate, bound = bench_scenario(args.servers, args.requests, args.load, args.profile)
    build = native.active_build()
    print(
        f"bench: {args.servers} servers, {args.requests:,} requests, policy {args.policy}, "
        f"offered {rate:.1f} req/s ({args.load:.0%} of the fluid estimate {bound:.1f}); "
        + (f"compiled simulator ({native.ENV}=1, {build})" if build else f"pure Python (compiled: {native.ENV}=1)"),
        file=sys.stderr,
    )

    def progress(n: int) -> None:
        print(f"\r  {n:,} requests", end="", file=sys.stderr, flush=True)

    def one(policy: str) -> dict:
        t0 = time.perf_counter()
        c0 = time.process_time()
        r = runner.run_once(sc, policy, 1.0, model, None, progress=progress)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        print(file=sys.stderr)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        out = {
            "servers": args.servers,
            "requests": r.requests,
            "policy": policy,
            "offeredRps": rate,
            "wallS": wall,
            "cpuS": cpu,
            "simRequestsPerWallS": r.requests / wall,
            "simRequestsPerCpuS": r.requests / cpu,
            "serverSteps": r.steps,
            "stepsPerRequest": r.steps / max(1, r.requests),
            "peakRssMb": rss_mb,
            "compiled": build is not None,
            "simulatedS": r.makespan_s,
            "attainment": {t.name: t.attainment_deadline for t in r.tiers},
        }
        print(
            f"{policy}: simulated {r.requests:,} requests in {wall:.2f} s wall / {cpu:.2f} s CPU: "
            f"{r.requests / wall:,.0f} req/s wall, {r.requests / cpu:,.0f} req/s CPU "
            f"({r.steps / max(1, r.requests):.2f} server steps per request, peak RSS {rss_mb:.0f} MB)"
        )
        print("  attainment: " + ", ".join(f"{k} {v:.1f}%" for k, v in out["attainment"].items()))
        return out

    result = one(args.policy)
    if args.compare and args.compare != "none" and args.compare != args.policy:
        base = one(args.compare)
        result["baseline"] = base
        result["cpuRateRatioToBaseline"] = result["simRequestsPerCpuS"] / base["simRequestsPerCpuS"]
        result["attainmentMinusBaseline"] = {
            k: result["attainment"][k] - base["attainment"][k] for k in result["attainment"]
        }
        print(
            f"{args.policy} / {args.compare}: simulated req/s per CPU-s ratio {result['cpuRateRatioToBaseline']:.2f}; "
            "attainment difference per tier: "
            + ", ".join(f"{k} {v:+.1f} pts" for k, v in result["attainmentMinusBaseline"].items())
        )
    if not args.no_profile and build is not None:
        print("\n(no cProfile pass: the compiled modules are invisible to it; profile the pure-Python run)")
    elif not args.no_profile:
        n = min(args.requests, 50_000)
        sc2, model2, _rate2, _ = bench_scenario(args.servers, n, args.load, args.profile)
        prof = cProfile.Profile()
        prof.enable()
        runner.run_once(sc2, args.policy, 1.0, model2, None)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        text = buf.getvalue()
        start = text.find("   ncalls")
        print(f"\nwhere the time goes (cProfile, {n:,} requests, top entries by own time; profiling slows it):")
        print(text[start:].rstrip() if start >= 0 else text)
        result["profileTop"] = text[start:].splitlines()[:17] if start >= 0 else []
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
