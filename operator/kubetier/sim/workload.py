"""Request streams for the fleet simulator: public traces and synthetic arrivals.

Everything here is a generator of ``Arrival`` tuples sorted by time, so a 10-million
request run holds only the requests in flight, never the whole workload. Sources are
merged by time with ``heapq.merge`` and time-scaled (a rate scale of 2 halves every
arrival time, i.e. doubles the rate while keeping the trace's burst shape).
"""

from __future__ import annotations

import csv
import gzip
import heapq
import itertools
import json
import math
import os
import random
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

# The public traces ship inside the package, gzip-compressed (licences, attribution and
# measured shapes: traces/README.md beside this module). $KUBETIER_TRACES_DIR or
# --traces-dir points at another folder holding the same names, plain or .gz.
TRACES_ENV = "KUBETIER_TRACES_DIR"
PACKAGED_TRACES_DIR = Path(__file__).resolve().parent / "traces"
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
    return PACKAGED_TRACES_DIR


def _plain_or_gz(path: Path) -> Path:
    """``path`` if it exists, else ``path.gz`` if that exists (else ``path``, for the error)."""
    if path.is_file() or path.suffix == ".gz":
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.is_file() else path


def resolve_trace(name_or_path: str, traces_dir: Path | None) -> Path:
    """A known trace name (looked up in the traces folder, plain or .gz) or a file path."""
    if name_or_path in KNOWN_TRACES:
        folder = traces_dir or default_traces_dir()
        path = _plain_or_gz(folder / KNOWN_TRACES[name_or_path])
    else:
        path = Path(name_or_path)
        if not path.is_absolute() and traces_dir is not None and (traces_dir / path).exists():
            path = traces_dir / path
    if not path.is_file():
        raise TraceMissingError(
            f"trace {name_or_path!r} not found at {path}; the public traces ship in "
            f"{PACKAGED_TRACES_DIR}. Point --traces-dir (or ${TRACES_ENV}) at a folder holding "
            f"{sorted(KNOWN_TRACES.values())} (plain or .gz), or give the trace as a file path"
        )
    return path


def open_trace_text(path: Path) -> IO[str]:
    """Open a trace file as text, decompressing on the fly when its name ends in .gz."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return path.open(newline="", encoding="utf-8")


def trace_format(path: Path) -> str:
    """``jsonl`` (Mooncake) or ``csv`` (Azure), from the name with any .gz left off."""
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    return "jsonl" if name.endswith(".jsonl") else "csv"


def _azure_rows(path: Path) -> Iterator[tuple[float, int, int]]:
    # TIMESTAMP is wall clock with 7 fractional digits; datetime wants at most 6.
    with open_trace_text(path) as f:
        reader = csv.reader(f)
        header = next(reader)
        cols = {name.strip(): i for i, name in enumerate(header)}
        try:
            ti, pi, oi = cols["TIMESTAMP"], cols["ContextTokens"], cols["GeneratedTokens"]
        except KeyError as exc:
            raise ValueError(
                f"{path}: missing column {exc.args[0]} (want TIMESTAMP, ContextTokens, GeneratedTokens)"
            ) from None
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
    with open_trace_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            yield rec["timestamp"] / 1000.0, int(rec["input_length"]), int(rec["output_length"])


def read_trace(path: Path) -> Iterator[tuple[float, int, int]]:
    """Stream (t_seconds_from_first, prompt_tokens, output_tokens) rows of a trace file
    (Azure CSV or Mooncake JSONL, plain or gzip-compressed).

    Rows are not assumed sorted (the Azure files are, to sub-second precision); a
    bounded reorder buffer of 1 s would be needed otherwise, so we check and complain.
    """
    rows = _mooncake_rows(path) if trace_format(path) == "jsonl" else _azure_rows(path)
    last = -math.inf
    for t, p, o in rows:
        if t < last - 1e-6:
            raise ValueError(f"{path}: arrivals out of order at t={t:.3f}s (previous {last:.3f}s)")
        last = t
        yield t, max(1, p), max(1, o)


# --- synthetic arrivals -----------------------------------------------------------------


class LengthDist(NamedTuple):
    kind: str  # "fixed" | "lognormal" | "uniform" | "zipf"
    mean: float
    sd: float = 0.0
    min: int = 1
    max: int = 1 << 20

    def sample(self, gen: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            v = np.full(n, round(self.mean), dtype=np.int64)
        elif self.kind == "uniform":
            half = self.sd * math.sqrt(3.0)
            a = max(self.min, int(self.mean - half))
            b = max(a, min(self.max, int(self.mean + half)))
            v = gen.integers(a, b + 1, n)
        elif self.kind == "lognormal":
            # parameters of the underlying normal from the wanted mean and sd
            var = math.log(1.0 + (self.sd / self.mean) ** 2)
            v = gen.lognormal(math.log(self.mean) - var / 2.0, math.sqrt(var), n).astype(np.int64)
        elif self.kind == "zipf":
            # Pareto tail (alpha 2.5) scaled to the wanted mean: BurstGPT's Zipf-like lengths
            alpha = 2.5
            v = (self.mean * (alpha - 1.0) / alpha * (gen.pareto(alpha, n) + 1.0)).astype(np.int64)
        else:
            raise ValueError(f"unknown length distribution {self.kind!r}")
        return np.clip(v, self.min, self.max)


def _arrival_block(
    gen: np.random.Generator,
    arrival: str,
    t: float,
    rate: float,
    cv: float,
    amplitude: float,
    period_s: float,
    block: int,
) -> tuple[np.ndarray, float]:
    """The next ``block`` candidate arrivals after ``t`` (diurnal: thinned), and the time the
    block reached: one definition of the arrival processes for both synthetic readers."""
    peak = rate * (1.0 + amplitude)
    if arrival == "poisson":
        times = t + np.cumsum(gen.exponential(1.0 / rate, block))
    elif arrival == "gamma":
        shape = 1.0 / (cv * cv)
        times = t + np.cumsum(gen.gamma(shape, 1.0 / (rate * shape), block))
    elif arrival == "diurnal":
        times = t + np.cumsum(gen.exponential(1.0 / peak, block))
    else:
        raise ValueError(f"unknown arrival process {arrival!r}")
    reached = float(times[-1])
    if arrival == "diurnal":
        keep = gen.random(block) * peak <= rate * (1.0 + amplitude * np.sin(2.0 * math.pi * times / period_s))
        times = times[keep]
    return times, reached


def synthetic(
    arrival: str,
    rate: float,
    prompt: LengthDist,
    output: LengthDist,
    seed: int,
    *,
    cv: float = 1.0,
    amplitude: float = 0.0,
    period_s: float = 3600.0,
    block: int = 1 << 14,
) -> Iterator[tuple[float, int, int]]:
    """Endless (t, prompt_tokens, output_tokens) rows, generated in numpy blocks.

    ``poisson``: exponential gaps; ``gamma``: Gamma gaps with mean 1/rate and coefficient
    of variation ``cv`` (BurstGPT's bursty arrivals); ``diurnal``: non-homogeneous
    Poisson with rate(t) = rate * (1 + amplitude * sin(2*pi*t/period_s)), by thinning.
    """
    gen = np.random.default_rng(seed)
    t = 0.0
    while True:
        times, t = _arrival_block(gen, arrival, t, rate, cv, amplitude, period_s, block)
        n = len(times)
        yield from zip(times.tolist(), prompt.sample(gen, n).tolist(), output.sample(gen, n).tolist())


# --- tier assignment, scaling, merging --------------------------------------------------


def tag_and_window(
    rows: Iterator[tuple[float, int, int]],
    tier_weights: list[tuple[int, float]],
    rng: random.Random,
    rate_scale: float,
    start_s: float,
    duration_s: float | None,
) -> Iterator[Arrival]:
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
        for edge, tier in cum:  # noqa: B007 - the tier that breaks the loop is used below
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


# --- rate scaling with the measured duration fixed ---------------------------------------


class Window(NamedTuple):
    """The arrivals of one run, as arrays sorted by time, plus the measurement window.

    ``t`` (seconds from the run's start), ``prompt``, ``output``, ``tier`` (int index).
    Requests arriving in ``[measure_from_s, measure_until_s)`` are the measured ones;
    the rest load the fleet (warm-up fills it, cool-down keeps it loaded while the last
    measured requests finish) but are left out of every figure.
    """

    t: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    tier: np.ndarray
    duration_s: float
    measure_from_s: float
    measure_until_s: float

    def measured(self) -> np.ndarray:
        return (self.t >= self.measure_from_s) & (self.t < self.measure_until_s)

    def tier_counts(self, n_tiers: int) -> list[int]:
        return np.bincount(self.tier[self.measured()], minlength=n_tiers).astype(int).tolist()

    def arrivals(self) -> Iterator[Arrival]:
        return map(Arrival._make, zip(self.t.tolist(), self.prompt.tolist(), self.output.tolist(), self.tier.tolist()))


def superpose(
    t: np.ndarray, prompt: np.ndarray, output: np.ndarray, tier: np.ndarray, duration_s: float, scale: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``scale`` times the rate over the same ``duration_s``: superpose time-shifted copies.

    Copy 0 is the window itself; copy j >= 1 is the window rotated by a random offset
    (``(t + offset_j) mod duration_s``), i.e. another independent stretch of the same
    traffic. ``floor(scale)`` copies are whole; the last is thinned to ``scale -
    floor(scale)`` of its rows (below scale 1, the window itself is thinned). Each copy
    keeps the source's burst shape and length distributions, and the simulated time stays
    the measured duration, unlike compressing time (a 900 s window at 25x lasting 36 s
    lets a 10 s TTFT tier absorb a burst and drain it after arrivals stop). Draws depend
    only on the seed and the copy index, so the rows kept at a scale are a subset of those
    kept at any larger scale (the goodput search compares nested workloads).
    """
    if scale <= 0:
        raise ValueError(f"rate scale must be > 0, got {scale}")
    n = len(t)
    whole = int(math.floor(scale + 1e-12))
    frac = scale - whole
    copies = whole + (1 if frac > 1e-9 else 0)
    ts, ps, os_, ks = [], [], [], []
    for j in range(copies):
        g = np.random.default_rng([seed, j])
        offset = 0.0 if j == 0 else float(g.uniform(0.0, duration_s))
        keep_u = g.random(n)
        sel = slice(None) if j < whole else keep_u < frac
        tj = t[sel]
        if offset:
            tj = np.mod(tj + offset, duration_s)
        ts.append(tj)
        ps.append(prompt[sel])
        os_.append(output[sel])
        ks.append(tier[sel])
    tt = np.concatenate(ts) if ts else np.zeros(0)
    order = np.argsort(tt, kind="stable")
    return tt[order], np.concatenate(ps)[order], np.concatenate(os_)[order], np.concatenate(ks)[order]


def window_rows(
    rows: Iterator[tuple[float, int, int]],
    tier_weights: list[tuple[int, float]],
    rng: random.Random,
    start_s: float,
    duration_s: float | None,
    max_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of source time ``[start_s, start_s + duration_s)`` as arrays (time relative to
    ``start_s``), each tagged with a tier (fixed, or drawn from the mix)."""
    return _arrays(tag_and_window(rows, tier_weights, rng, 1.0, start_s, duration_s), max_rows)


def _arrays(stream: Iterator[Arrival], max_rows: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if max_rows is not None:
        stream = itertools.islice(stream, max_rows)
    rows = list(stream)
    if not rows:
        z = np.zeros(0, dtype=np.int64)
        return np.zeros(0), z, z, z
    a = np.array(rows, dtype=np.float64)
    return a[:, 0], a[:, 1].astype(np.int64), a[:, 2].astype(np.int64), a[:, 3].astype(np.int64)


def synthetic_window(
    arrival: str,
    rate: float,
    prompt: LengthDist,
    output: LengthDist,
    seed: int,
    duration_s: float,
    tier_weights: list[tuple[int, float]],
    *,
    cv: float = 1.0,
    amplitude: float = 0.0,
    period_s: float = 3600.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic source over ``[0, duration_s)`` as arrays (the same processes as
    :func:`synthetic`, drawn in numpy blocks; tiers drawn from the weights)."""
    gen = np.random.default_rng(seed)
    parts = []
    t = 0.0
    peak = rate * (1.0 + amplitude)
    block = max(1024, min(1 << 20, int(peak * duration_s * 1.1) + 64))
    while t < duration_s:
        times, t = _arrival_block(gen, arrival, t, rate, cv, amplitude, period_s, block)
        parts.append(times[times < duration_s])
    tt = np.concatenate(parts) if parts else np.zeros(0)
    n = len(tt)
    p = prompt.sample(gen, n).astype(np.int64)
    o = output.sample(gen, n).astype(np.int64)
    idx = np.array([i for i, _ in tier_weights], dtype=np.int64)
    w = np.array([max(0.0, x) for _, x in tier_weights], dtype=np.float64)
    k = idx[gen.choice(len(idx), size=n, p=w / w.sum())] if len(idx) > 1 else np.full(n, idx[0], dtype=np.int64)
    return tt, p, o, k
