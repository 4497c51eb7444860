"""Request streams for the fleet simulator: public traces and synthetic arrivals.

Everything here is a generator of ``Arrival`` tuples sorted by time, so a 10-million
request run holds only the requests in flight, never the whole workload. Sources are
merged by time with ``heapq.merge`` and time-scaled (a rate scale of 2 halves every
arrival time, i.e. doubles the rate while keeping the trace's burst shape).
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
import math
import os
import random
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

# Where the shared public traces live by default: ../shared/traces beside the checkout.
TRACES_ENV = "KUBETIER_TRACES_DIR"
KNOWN_TRACES = {
    "azure_llm_2023_code": "azure_llm_2023_code.csv",
    "azure_llm_2023_conv": "azure_llm_2023_conv.csv",
    "mooncake_conversation": "mooncake_conversation.jsonl",
}


class Arrival(NamedTuple):
    t: float  # seconds from the start of the run
    prompt_tokens: int
    output_tokens: int
    tier: int  # index into the scenario's tier list


class TraceMissingError(FileNotFoundError):
    pass


def default_traces_dir() -> Path:
    if os.environ.get(TRACES_ENV):
        return Path(os.environ[TRACES_ENV])
    # operator/kubetier/sim/workload.py -> repository root is parents[3]; traces sit beside it.
    repo = Path(__file__).resolve().parents[3]
    for candidate in (repo.parent / "shared" / "traces", repo / "shared" / "traces"):
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "traces"


def resolve_trace(name_or_path: str, traces_dir: Path | None) -> Path:
    """A known trace name (looked up in the traces folder) or a file path."""
    if name_or_path in KNOWN_TRACES:
        folder = traces_dir or default_traces_dir()
        path = folder / KNOWN_TRACES[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.is_absolute() and traces_dir is not None and (traces_dir / path).exists():
            path = traces_dir / path
    if not path.is_file():
        raise TraceMissingError(
            f"trace {name_or_path!r} not found at {path}; the public traces live in "
            f"../shared/traces beside the checkout (see its README). Point "
            f"--traces-dir (or ${TRACES_ENV}) at a folder holding {sorted(KNOWN_TRACES.values())}, "
            f"or give the trace as a file path"
        )
    return path


def _azure_rows(path: Path) -> Iterator[tuple[float, int, int]]:
    # TIMESTAMP is wall clock with 7 fractional digits; datetime wants at most 6.
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        cols = {name.strip(): i for i, name in enumerate(header)}
        try:
            ti, pi, oi = cols["TIMESTAMP"], cols["ContextTokens"], cols["GeneratedTokens"]
        except KeyError as exc:
            raise ValueError(f"{path}: missing column {exc.args[0]} (want TIMESTAMP, ContextTokens, GeneratedTokens)") from None
        t0 = None
        for row in reader:
            stamp = row[ti]
            if "." in stamp:
                head, frac = stamp.split(".", 1)
                stamp = f"{head}.{frac[:6]}"
            t = datetime.fromisoformat(stamp).timestamp()
            if t0 is None:
                t0 = t
            yield t - t0, int(row[pi]), int(row[oi])


def _mooncake_rows(path: Path) -> Iterator[tuple[float, int, int]]:
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            yield rec["timestamp"] / 1000.0, int(rec["input_length"]), int(rec["output_length"])


def read_trace(path: Path) -> Iterator[tuple[float, int, int]]:
    """Stream (t_seconds_from_first, prompt_tokens, output_tokens) rows of a trace file.

    Rows are not assumed sorted (the Azure files are, to sub-second precision); a
    bounded reorder buffer of 1 s would be needed otherwise, so we check and complain.
    """
    rows = _mooncake_rows(path) if path.suffix == ".jsonl" else _azure_rows(path)
    last = -math.inf
    for t, p, o in rows:
        if t < last - 1e-6:
            raise ValueError(f"{path}: arrivals out of order at t={t:.3f}s (previous {last:.3f}s)")
        last = t
        yield t, max(1, p), max(1, o)


# --- synthetic arrivals -----------------------------------------------------------------


def poisson_times(rate: float, rng: random.Random) -> Iterator[float]:
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t


def gamma_times(rate: float, cv: float, rng: random.Random) -> Iterator[float]:
    """Gamma inter-arrival times with mean 1/rate and coefficient of variation cv (BurstGPT)."""
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    t = 0.0
    while True:
        t += rng.gammavariate(shape, scale)
        yield t


def diurnal_times(rate: float, amplitude: float, period_s: float, rng: random.Random) -> Iterator[float]:
    """Non-homogeneous Poisson with rate(t) = rate * (1 + amplitude*sin(2πt/period)), by thinning."""
    peak = rate * (1.0 + amplitude)
    t = 0.0
    two_pi = 2.0 * math.pi
    while True:
        t += rng.expovariate(peak)
        if rng.random() * peak <= rate * (1.0 + amplitude * math.sin(two_pi * t / period_s)):
            yield t


class LengthDist(NamedTuple):
    kind: str  # "fixed" | "lognormal" | "uniform" | "zipf"
    mean: float
    sd: float = 0.0
    min: int = 1
    max: int = 1 << 20

    def sampler(self, rng: random.Random):
        lo, hi = self.min, self.max
        if self.kind == "fixed":
            v = int(round(self.mean))
            return lambda: v
        if self.kind == "uniform":
            a, b = max(lo, int(self.mean - self.sd * math.sqrt(3))), min(hi, int(self.mean + self.sd * math.sqrt(3)))
            return lambda: rng.randint(a, max(a, b))
        if self.kind == "lognormal":
            # parameters of the underlying normal from the wanted mean and sd
            var = math.log(1.0 + (self.sd / self.mean) ** 2)
            mu, sigma = math.log(self.mean) - var / 2.0, math.sqrt(var)
            return lambda: min(hi, max(lo, int(rng.lognormvariate(mu, sigma))))
        if self.kind == "zipf":
            # Pareto tail scaled to the wanted mean (BurstGPT's Zipf-like lengths); sd unused
            alpha = 2.5
            xm = self.mean * (alpha - 1.0) / alpha
            return lambda: min(hi, max(lo, int(xm * rng.paretovariate(alpha))))
        raise ValueError(f"unknown length distribution {self.kind!r}")


def synthetic(times: Iterator[float], prompt: LengthDist, output: LengthDist, rng: random.Random) -> Iterator[tuple[float, int, int]]:
    ps, os_ = prompt.sampler(rng), output.sampler(rng)
    for t in times:
        yield t, ps(), os_()


# --- tier assignment, scaling, merging --------------------------------------------------


def tag_and_window(rows: Iterator[tuple[float, int, int]], tier_weights: list[tuple[int, float]], rng: random.Random,
                   rate_scale: float, start_s: float, duration_s: float | None) -> Iterator[Arrival]:
    """Give each row a tier (one fixed tier, or drawn from a mix by cumulative weights),
    keep source time [start_s, start_s + duration_s) and compress time by rate_scale.

    The window is taken in the source's own time, so every rate scale replays the same
    requests (comparable attainment across the goodput search), only closer together.
    A tier is drawn for every row, inside the window or not, so the draws do not depend
    on the window. One generator layer, one tuple per request: this is on the hot path.
    """
    inv = 1.0 / rate_scale
    end = math.inf if duration_s is None else start_s + duration_s
    if len(tier_weights) == 1:
        tier = tier_weights[0][0]
        for t, p, o in rows:
            if t < start_s:
                continue
            if t >= end:
                return
            yield Arrival((t - start_s) * inv, p, o, tier)
        return
    total = sum(w for _, w in tier_weights)
    cum, acc = [], 0.0
    for idx, w in tier_weights:
        acc += w / total
        cum.append((acc, idx))
    cum[-1] = (math.inf, cum[-1][1])  # rounding never leaves a draw without a tier
    rand = rng.random
    for t, p, o in rows:
        r = rand()
        for edge, tier in cum:
            if r <= edge:
                break
        if t < start_s:
            continue
        if t >= end:
            return
        yield Arrival((t - start_s) * inv, p, o, tier)


def merge(streams: list[Iterator[Arrival]]) -> Iterator[Arrival]:
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda a: a.t)


def limit(stream: Iterator[Arrival], max_requests: int | None) -> Iterator[Arrival]:
    return stream if max_requests is None else itertools.islice(stream, max_requests)
