"""`kubetier simulate generate --seed N`: random but realistic scenarios.

Policies are tuned and judged on scenarios drawn here, not on the shipped three, so a
result generalises to workloads and fleets the project has not seen. A draw picks:

* a built-in latency profile (every shipped one);
* 2-4 tiers, TPOT log-uniform in [15, 200] ms (at least 1.5x the profile's one-sequence
  decode step, distinct), TTFT log-uniform in [200 ms, 20 s], tighter TPOT with tighter
  TTFT (sorted together), TTFT raised to 3x the idle prefill of the tier's typical
  prompt when the draw is below it (a tier no server can ever meet is not a scenario);
* 1-3 sources, each a public trace window (random start) or synthetic arrivals
  (Poisson, Gamma with CV 1-4, or diurnal with amplitude 0.3-0.9), lengths lognormal
  with the mean and spread of one of the shipped traces (code, conversation,
  long-context) or heavy-tailed (Pareto, BurstGPT-like), each source tagged with one tier
  or a random mix;
* a fleet of 8 to ``max_servers`` (default 1,000) servers, log-uniform, as a shared pool
  or a random partition (every tier at least one server).

The window is sized so a run at the estimated capacity holds about
``target_requests`` arrivals (300-600 s: long enough that a tier has tens of measured
requests even at low rate scales). Output is a scenario document (the YAML
format of ``kubetier simulate --scenario``).
"""

from __future__ import annotations

import argparse
import math
import random
import sys

import yaml

from kubetier.policy.latency import list_profiles, load_profile

from .bound import fluid_estimate
from .workload import KNOWN_TRACES

# Length statistics of the shipped public traces (whole files; prompt and output tokens:
# mean, sd, p99), measured by kubetier.sim.workload.read_trace over each file.
TRACE_LENGTHS = {
    "code": {"prompt": (2048, 1974, 7436), "output": (28, 60, 251)},  # azure_llm_2023_code
    "conversation": {"prompt": (1155, 1109, 4142), "output": (211, 163, 601)},  # azure_llm_2023_conv
    "long-context": {"prompt": (12035, 15800, 85400), "output": (343, 250, 1118)},  # mooncake_conversation
}
TRACE_KIND = {
    "azure_llm_2023_code": "code",
    "azure_llm_2023_conv": "conversation",
    "mooncake_conversation": "long-context",
}
TRACE_SPAN_S = 3400.0  # every shipped trace covers a bit more than this


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _lengths(rng: random.Random, kind: str, heavy: bool, cap: int) -> tuple[dict, dict]:
    st = TRACE_LENGTHS[kind]
    out = []
    for key in ("prompt", "output"):
        mean, sd, p99 = st[key]
        if heavy:
            out.append({"dist": "zipf", "mean": float(mean), "min": 1, "max": int(min(cap, 4 * p99))})
        else:
            out.append(
                {"dist": "lognormal", "mean": float(mean), "sd": float(sd), "min": 1, "max": int(min(cap, 2 * p99))}
            )
    return out[0], out[1]


# Shortest window a draw gets by default: long enough that a tier has tens of measured
# requests even at low rate scales. A benchmark may ask for shorter windows
# (``min_duration_s``): the run's cost grows with its arrivals, and a fleet whose
# capacity times 300 s is far above ``target_requests`` (seed 2002 at 16 servers: ~36k
# arrivals per run) is what made the 30-scenario benchmark unaffordable.
MIN_DURATION_S = 300.0


def generate(
    seed: int, max_servers: int = 1000, target_requests: int = 20_000, min_duration_s: float = MIN_DURATION_S
) -> dict:
    rng = random.Random(seed)
    profile = rng.choice(sorted(list_profiles()))
    model = load_profile(profile)
    d1 = model.decode_iteration_s(1, 0) * 1000.0
    k = rng.randint(2, 4)
    tpots: list[int] = []  # whole milliseconds, like the ModelService's tpotMs
    while len(tpots) < k:
        v = round(_log_uniform(rng, max(15.0, 1.5 * d1), 200.0))
        if all(abs(v - u) > 1.0 for u in tpots):
            tpots.append(v)
    tpots.sort()
    ttfts = sorted(round(_log_uniform(rng, 200.0, 20_000.0)) for _ in range(k))
    names = ["t%d" % i for i in range(k)]
    # prompts must fit one server's KV cache with room for the output
    cap = model.kv_capacity_tokens // 4

    sources = []
    tier_prompt = [0.0] * k
    tier_output = [0.0] * k
    tier_share = [0.0] * k
    n_src = rng.randint(1, 3)
    duration = 600.0
    for _ in range(n_src):
        if rng.random() < 0.5:
            trace = rng.choice(sorted(KNOWN_TRACES))
            kind = TRACE_KIND[trace]
            src: dict = {"trace": trace}
            rate = None
        else:
            kind = rng.choice(sorted(TRACE_LENGTHS))
            heavy = rng.random() < 0.35
            prompt, output = _lengths(rng, kind, heavy, cap)
            arrival = rng.choice(["poisson", "gamma", "diurnal"])
            syn: dict = {"arrival": arrival, "rate": 1.0, "prompt": prompt, "output": output}
            if arrival == "gamma":
                syn["cv"] = round(rng.uniform(1.0, 4.0), 2)
            if arrival == "diurnal":
                syn["amplitude"] = round(rng.uniform(0.3, 0.9), 2)
                syn["periodS"] = 0.0  # set below from the window
            src = {"synthetic": syn}
            rate = syn
        if rng.random() < 0.5:
            weights = {rng.randrange(k): 1.0}
        else:
            ws = [rng.random() for _ in range(k)]
            weights = {i: w / sum(ws) for i, w in enumerate(ws)}
        sources.append([src, rate, kind, weights])
    # every tier gets traffic: a tier no source feeds joins a random source's mix
    for i in range(k):
        if not any(i in s_[3] for s_ in sources):
            s_ = rng.choice(sources)
            s_[3][i] = rng.uniform(0.1, 1.0)
    for src, _rate, kind, weights in sources:
        total = sum(weights.values())
        if len(weights) == 1:
            src["tier"] = names[next(iter(weights))]
        else:
            src["mix"] = {names[i]: round(w / total, 3) for i, w in sorted(weights.items())}
        weights = {i: w / total for i, w in weights.items()}
        mean_p = TRACE_LENGTHS[kind]["prompt"][0]
        mean_o = TRACE_LENGTHS[kind]["output"][0]
        for i, w in weights.items():
            tier_prompt[i] += w * mean_p
            tier_output[i] += w * mean_o
            tier_share[i] += w
    tiers = []
    for i in range(k):
        share = tier_share[i]
        mp = tier_prompt[i] / share if share else 1000.0
        mo = tier_output[i] / share if share else 200.0
        ttft = max(ttfts[i], math.ceil(3000.0 * model.prefill_s(int(mp))))
        tiers.append(
            {
                "name": names[i],
                "ttftMs": int(min(ttft, 60_000)),
                "tpotMs": tpots[i],
                "attainmentPercent": 90,
                "priority": 100 * (k - i),
                "meanOutputTokens": max(1, int(mo)),
            }
        )
    # keep tighter TPOT with tighter-or-equal TTFT after the raise
    for i in range(1, k):
        tiers[i]["ttftMs"] = max(tiers[i]["ttftMs"], tiers[i - 1]["ttftMs"])

    n = int(round(_log_uniform(rng, 8, max(8, max_servers))))
    pool = rng.random() < 0.5
    # rough capacity, to size the window and the synthetic rates near the goodput point
    total_share = sum(tier_share) or 1.0
    rows = [
        (
            names[i],
            tier_share[i] / total_share,
            tier_prompt[i] / tier_share[i] if tier_share[i] else 1.0,
            tier_output[i] / tier_share[i] if tier_share[i] else 1.0,
            tiers[i]["tpotMs"] / 1000.0,
            tiers[i]["ttftMs"] / 1000.0,
        )
        for i in range(k)
    ]
    capacity = max(1.0, fluid_estimate(model, n, rows))
    # never shorter than a few of the loosest TTFT (a request must be able to finish
    # inside the window it is measured in)
    floor = max(min_duration_s, 5.0 * max(t["ttftMs"] for t in tiers) / 1000.0)
    duration = float(min(600.0, max(floor, round(target_requests / capacity))))
    n_syn = sum(1 for s_ in sources if s_[1] is not None)
    n_trace = len(sources) - n_syn
    out_sources = []
    for src, syn, _kind, _w in sources:
        if syn is not None:
            # synthetic sources carry their share of ~half the estimated capacity at scale 1
            syn["rate"] = round(max(0.05, 0.5 * capacity / max(1, n_syn) / (2 if n_trace else 1)), 3)
            if syn["arrival"] == "diurnal":
                syn["periodS"] = round(duration / rng.choice([1, 2, 3]), 1)
        out_sources.append(src)
    start = round(rng.uniform(0.0, max(0.0, TRACE_SPAN_S - duration)), 1) if n_trace else 0.0
    if pool:
        fleet: dict = {"pool": n}
    else:
        weights = [rng.random() + 0.2 for _ in range(k)]
        s = sum(weights)
        counts = [max(1, int(n * w / s)) for w in weights]
        while sum(counts) > n:
            counts[counts.index(max(counts))] -= 1
        counts[rng.randrange(k)] += n - sum(counts)
        fleet = {"servers": {names[i]: counts[i] for i in range(k)}}
    fleet["modelLoadS"] = 60
    return {
        "name": f"generated-{seed}",
        "description": f"generated by `kubetier simulate generate --seed {seed}`",
        "seed": seed,
        "profile": profile,
        "tiers": tiers,
        "workload": {"startS": start, "durationS": duration, "sources": out_sources},
        "fleet": fleet,
        "policies": ["kubetier", "round-robin", "least-loaded", "static-partition", "two-class"],
        "goodput": {"minScale": 1 / 256, "maxScale": 4096, "iterations": 6},
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="kubetier simulate generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, required=True, help="the draw (same seed, same scenario)")
    p.add_argument("--max-servers", type=int, default=1000, help="largest fleet drawn (default 1000)")
    p.add_argument("--target-requests", type=int, default=20_000, help="arrivals per run near the goodput point")
    p.add_argument(
        "--min-duration-s",
        type=float,
        default=MIN_DURATION_S,
        help=f"shortest window (default {MIN_DURATION_S:g}; never below 5x the loosest TTFT)",
    )
    p.add_argument("--output", default=None, help="write the YAML here (default: stdout)")
    args = p.parse_args(argv)
    if args.max_servers < 8:
        p.error("--max-servers must be >= 8")
    doc = generate(args.seed, args.max_servers, args.target_requests, args.min_duration_s)
    text = yaml.safe_dump(doc, sort_keys=False)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
