"""`kubetier simulate learning-bench`: the online latency correction against engines that
run slower or faster than their profile.

Every engine of a synthetic three-tier fleet runs ``factor`` times its profile's
iteration times (1.3 = 30% slower, 0.8 = 20% faster). The SLO policy routes with (a) the
profile alone and (b) the profile corrected online (kubetier.policy.latency_learning)
from the engines' step timings, each seen with 20% lognormal noise, one server's timings
5x off (a broken exporter: the median must ignore it). Printed and written as JSON:
per-tier attainment with and without learning (and with an exact profile, factor 1, for
reference), the prediction error (mean |log(corrected prediction / observed)|) over the
first and the last 500 observations and that of the uncorrected profile on the same
observations, and how many requests had completed when the
learned scale first came within 5% of the true factor. A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from kubetier.policy.latency import load_profile
from kubetier.policy.routing import TierSLO

from .engine import SimConfig, Simulator
from .metrics import Collector, summarize
from .runner import build_window
from .scenario import parse_scenario


def _scenario(servers: int, rate: float, duration: float) -> dict:
    return {
        "name": "learning-bench",
        "seed": 21,
        "profile": "llama-3.1-8b-h100",
        "tiers": [
            {"name": "interactive", "ttftMs": 500, "tpotMs": 30, "meanOutputTokens": 200},
            {"name": "standard", "ttftMs": 2000, "tpotMs": 60, "meanOutputTokens": 200},
            {"name": "batch", "ttftMs": 10000, "tpotMs": 150, "meanOutputTokens": 200},
        ],
        "workload": {
            "durationS": duration,
            "sources": [
                {
                    "synthetic": {
                        "arrival": "poisson",
                        "rate": rate,
                        "prompt": {"dist": "lognormal", "mean": 1155, "sd": 1109, "min": 1, "max": 8000},
                        "output": {"dist": "lognormal", "mean": 211, "sd": 163, "min": 1, "max": 1200},
                    },
                    "mix": {"interactive": 0.3, "standard": 0.4, "batch": 0.3},
                }
            ],
        },
        "fleet": {"pool": servers},
    }


class _Trace(Collector):
    """Collector that also notes when the learned scale first came within 5% of the truth."""

    def __init__(self, n: int, sim_ref: list, truth: float) -> None:
        super().__init__(n)
        self.sim_ref = sim_ref
        self.truth = truth
        self.converged_at: int | None = None
        self.errors: list[float] = []

    def record(self, *a) -> None:  # type: ignore[no-untyped-def]
        super().record(*a)
        sim = self.sim_ref[0]
        if self.converged_at is None and sim is not None and sim.learner is not None:
            c = next(iter(sim.policy._costs.values()))
            if abs(c.scale / self.truth - 1.0) <= 0.05:
                self.converged_at = len(self)


def run(factor: float, learn: bool, servers: int, rate: float, duration: float) -> dict:
    sc = parse_scenario(_scenario(servers, rate, duration))
    model = load_profile(sc.profile)
    win = build_window(sc, 1.0, None)
    cfg = SimConfig(
        tiers=[TierSLO.from_api(t) for t in sc.tiers],
        server_tiers=sc.server_tiers(),
        model=model,
        policy_kind="slo",
        seed=sc.seed,
        rebin_idle=True,
        measure_from_s=win.measure_from_s,
        measure_until_s=win.measure_until_s,
        learn_latency=learn,
    )
    ref: list = [None]
    col = _Trace(len(sc.tiers), ref, factor)
    sim = Simulator(cfg, sink=col)
    ref[0] = sim
    for srv in sim.servers:
        srv.slowdown = factor
    errors: list[float] = []
    prior_errors: list[float] = []  # the same observations against the uncorrected profile
    if sim.learner is not None:
        learner = sim.learner
        real = learner.observe
        broken = sim.servers[0].sid

        def observe(sid: str, predicted: float, observed: float) -> None:
            if sid == broken:
                observed *= 5.0
            c = sim.policy._servers[sid].costs
            errors.append(abs(math.log(predicted * c.scale / observed)))
            prior_errors.append(abs(math.log(predicted / observed)))
            real(sid, predicted, observed)

        learner.observe = observe  # type: ignore[method-assign]
    sim.run(win.arrivals())
    stats = summarize(
        col, [t.name for t in sc.tiers], [t.ttft_ms for t in sc.tiers], [t.tpot_ms for t in sc.tiers], [90.0] * 3
    )
    out = {
        "factor": factor,
        "learning": learn,
        "requests": sim.n_arrived,
        "attainment": {t.name: round(t.attainment_deadline, 1) for t in stats},
        "meetsTargets": all(t.meets_target for t in stats),
    }
    if sim.learner is not None:
        c = next(iter(sim.policy._costs.values()))
        out["learnedScale"] = c.scale
        out["observations"] = len(errors)
        out["profileError"] = sum(prior_errors) / max(1, len(prior_errors))
        out["errorFirst500"] = sum(errors[:500]) / max(1, len(errors[:500]))
        out["errorLast500"] = sum(errors[-500:]) / max(1, len(errors[-500:]))
        out["convergedAfterRequests"] = col.converged_at
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="kubetier simulate learning-bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--servers", type=int, default=16)
    p.add_argument("--rate", type=float, default=40.0, help="requests/s offered")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of arrivals")
    p.add_argument("--factors", default="1.3,0.8", help="engine speed factors (iteration time / profile)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    rows = [run(1.0, False, args.servers, args.rate, args.duration)]
    for f in (float(x) for x in args.factors.split(",")):
        for learn in (False, True):
            rows.append(run(f, learn, args.servers, args.rate, args.duration))
    for r in rows:
        extra = ""
        if r["learning"]:
            extra = (
                f"  scale {r['learnedScale']:.3f}, |log err| profile alone {r['profileError']:.3f}, corrected: "
                f"first 500 obs {r['errorFirst500']:.3f} -> last 500 "
                f"{r['errorLast500']:.3f}, within 5% after {r['convergedAfterRequests']} requests"
            )
        print(
            f"engine x{r['factor']:.2f} learning={'on ' if r['learning'] else 'off'} "
            f"attainment {r['attainment']} {'PASS' if r['meetsTargets'] else 'fail'}{extra}"
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
