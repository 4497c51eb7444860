"""``kubetier router bench replicas``: N independent router replicas against one router at
the same load, on a rig where the engines' simulated capacity binds, not the machine's CPU.

Why this rig. Replicas are judged by per-tier SLO attainment (issue: within 1 percentage
point of one router). That only means something where attainment is below 100% because
of the engines (routing decisions then decide who meets the targets), and where the
machine's CPU is not the bottleneck (otherwise the variants with more processes compete
with the engines and the load generator for the same cores, and the same variant moved
up to 54 points between two repeats at 600 streams on 2 cores: docs/router.md, "N router
replicas"). So the engine simulators run slowly and in small batches: one token every
``--token-ms`` at batch 1 (default 100 ms), ``--batch-slowdown`` slower at the full batch
of ``--max-num-seqs`` (default 8 sequences), short outputs (``--output-tokens``, 16), and
a few dozen streams in flight. The router has the same profile and the tiers' targets are
multiples of the token time: the interactive tier can use only small batches, so the
tiers compete for batch slots and the tightest tier's attainment falls first.

Variants (fresh processes for every run, so no run inherits another's learned state):

- ``1w``: one router, one worker (the baseline the others are compared with);
- ``2w``: one router with two workers (``--workers 2``: SO_REUSEPORT, shared metrics only;
  in routing they are two replicas too);
- ``2r``, ``3r`` (any ``Nr``): N independent ``kubetier router`` processes behind one port
  (SO_REUSEPORT: the kernel spreads connections as a Service does), nothing shared: each
  sees the fleet through its configuration (static discovery) and the engines' /metrics;
- a suffix ``@S`` runs the variant with a scrape interval of S seconds (``2r@0.25``);
- a suffix ``:fF`` runs it with ``--fresh-read-interval F`` (``3r:f0`` never re-reads an
  engine before routing onto it: the router before that rule; without the suffix, the
  router's default);
- a suffix ``:base`` runs the variant's routers from another source tree
  (``--baseline-src``, e.g. main's ``operator/`` directory): before/after in one run.

Every run plays the same arrival schedule (``--seed``: Poisson arrivals at ``--rate``,
tiers drawn by ``--shares``), variants alternate order between repeats (forward, then
backward), and each variant is compared with the baseline of the same repeat. Per run:
per-tier attainment from the client side (deadline-based; 429, 503 and errors are misses),
the count of accepted requests that were not answered in full (should be 0), each
replica's share of the requests (its /kubetier/status on its own admin port), the CPU
share of the routers, the engines and the load generator, and the 1-minute load average
(mean and max, sampled every second). The summary gives, per variant and tier, the mean
and spread over repeats and the paired difference to the baseline with a 95% interval;
the verdict is "within 1 pp" only when the whole interval lies within +-1 point.

Prints figures and writes JSON (default under bench-results/); asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import yaml

from kubetier.router import bench
from kubetier.stats import percentile

MODEL = "replicas-bench"
# Tier targets in multiples of the batch-1 token time t. With the default profile
# (iteration t at batch 1, 2t at batch 8) interactive's TPOT admits batches of about 3,
# standard's about 6, batch's the full 8: the tiers compete for batch slots.
TIER_SHAPES: list[dict] = [
    {"name": "interactive", "ttft": 5.0, "tpot": 1.3, "priority": 100, "onLate": "reject"},
    {"name": "standard", "ttft": 15.0, "tpot": 1.8, "priority": 50, "onLate": "reject"},
    {"name": "batch", "ttft": 100.0, "tpot": 4.0, "priority": 10, "onLate": "queue"},
]
# Two-sided 95% Student t quantiles by degrees of freedom (the paired difference's interval).
_T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}
_T975.update({11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093})
_T975.update({20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048})
_T975.update({29: 2.045, 30: 2.042})  # beyond: 2.042 (slightly wide)
CRITERION_PP = 1.0


def capacity_profile(token_ms: float, max_num_seqs: int, batch_slowdown: float) -> dict:
    """An engine whose batch slots bind: iteration ``token_ms`` at batch 1, ``(1 +
    batch_slowdown) x token_ms`` at ``max_num_seqs``; KV never binds; a 128-token prompt
    adds 10% to the iteration carrying it."""
    top = token_ms * (1.0 + batch_slowdown)
    return {
        "name": f"bench-capacity-{token_ms:g}ms-{max_num_seqs}seq",
        "kvCapacityTokens": 10_000_000,
        "maxNumSeqs": max_num_seqs,
        "maxNumBatchedTokens": 8192,
        "decode": {
            "batchSizes": [1, max_num_seqs] if max_num_seqs > 1 else [1, 2],
            "kvTokens": [0, 10_000_000],
            "iterationMs": [[token_ms, token_ms], [top, top]],
        },
        "prefill": {"tokens": [128, 8192], "ms": [token_ms * 1.1, token_ms * 3.0]},
        "power": {
            "idleWatts": 90,
            "tdpWatts": 700,
            "decodeWatts": {"batchSizes": [1], "watts": [300]},
            "prefillWatts": 600,
        },
        "sources": ["synthetic: slow tokens in small batches, so batch slots bind (router replicas benchmark)"],
    }


def tiers_for(token_ms: float, output_tokens: int, shares: list[float]) -> list[dict]:
    out: list[dict] = []
    for shape, share in zip(TIER_SHAPES, shares):
        out.append(
            {
                "name": shape["name"],
                "ttftMs": round(shape["ttft"] * token_ms),
                "tpotMs": round(shape["tpot"] * token_ms),
                "priority": shape["priority"],
                "meanOutputTokens": output_tokens,
                "onLate": shape["onLate"],
                "share": share,
            }
        )
    return out


@dataclass(frozen=True)
class VariantSpec:
    name: str
    processes: int  # independent router processes (replicas)
    workers: int  # workers per process
    scrape_s: float
    fresh_read_s: float | None = None  # --fresh-read-interval; None: the router's default
    baseline: bool = False  # routers from --baseline-src


_VARIANT = re.compile(r"^(?:(\d+)w|(\d+)r)(?:@([0-9.]+))?(?::f([0-9.]+))?(:base)?$")


def parse_variant(text: str, default_scrape_s: float) -> VariantSpec:
    m = _VARIANT.match(text)
    if m is None:
        raise ValueError(
            f"unknown variant {text!r}: expected Kw (one router, K workers) or Nr (N replicas), @S and :fF optional"
        )
    workers, replicas, scrape, fresh, base = m.groups()
    fresh_s = float(fresh) if fresh else None
    scrape_s = float(scrape) if scrape else default_scrape_s
    if scrape_s <= 0:
        raise ValueError(f"variant {text!r}: the scrape interval must be positive")
    if workers is not None:
        if int(workers) < 1:
            raise ValueError(f"variant {text!r}: at least 1 worker")
        return VariantSpec(text, 1, int(workers), scrape_s, fresh_s, base is not None)
    assert replicas is not None
    if int(replicas) < 1:
        raise ValueError(f"variant {text!r}: at least 1 replica")
    return VariantSpec(text, int(replicas), 1, scrape_s, fresh_s, base is not None)


# --------------------------------------------------------------------------- processes


def _proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process and its live children (a router's workers)."""
    return bench._cpu_seconds(pid, with_children=True)


def _start(args: list[str], src: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # replicas share nothing
    if src is not None:  # another build's kubetier package (a baseline) ahead of this one
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "kubetier.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class Routers:
    """One variant's router processes on one client port; each with its own admin port."""

    def __init__(self, spec: VariantSpec, cfg_path: str, baseline_src: str | None = None) -> None:
        self.spec = spec
        self.port = bench._free_port()
        self.admin_ports: list[int] = []
        self.procs: list[subprocess.Popen] = []
        for _ in range(spec.processes):
            admin = bench._free_port()
            args = ["router", "--port", str(self.port), "--config", cfg_path, "--admin-port", str(admin)]
            args += ["--scrape-interval", str(spec.scrape_s), "--workers", str(spec.workers)]
            args += ["--log-level", "WARNING", "--no-access-log"]
            if spec.fresh_read_s is not None:
                args += ["--fresh-read-interval", str(spec.fresh_read_s)]
            # One load generator is one client address: lift the per-address connection cap.
            args += ["--max-connections-per-client", "100000", "--max-connections", "100000"]
            if spec.processes > 1:
                args.append("--reuse-port")
            self.procs.append(_start(args, baseline_src if spec.baseline else None))
            self.admin_ports.append(admin)

    def wait_up(self) -> None:
        for port in [self.port, *self.admin_ports]:
            bench._wait_up(port)

    def cpu_s(self) -> float:
        return sum(_proc_cpu_s(p.pid) for p in self.procs)

    def statuses(self) -> list[dict | None]:
        return [_status(port) for port in self.admin_ports]

    def stop(self) -> None:
        _stop(self.procs)


def _status(port: int) -> dict | None:
    """Per-tier request tallies of the router process(es) answering on ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
            s.sendall(b"GET /kubetier/status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        model = body["models"][MODEL]
        out: dict = {
            t: {k: v.get(k) for k in ("requests", "completed", "rejected", "failed", "spilled")}
            for t, v in model["tiers"].items()
        }
        # Why requests waited or were refused, and how this replica's view held up.
        out["_decisions"] = model.get("decisions")
        out["_view_checks"] = model.get("viewChecks")
        out["_latency_scale"] = model.get("latencyScale")
        return out
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _engine_running(port: int) -> float | None:
    """running + waiting sequences of one engine (its vLLM-named /metrics)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    total = 0.0
    for line in data.decode(errors="replace").splitlines():
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
            total += float(line.rsplit(" ", 1)[-1])
    return total


class LoadSampler:
    """The 1-minute load average, sampled every second while a run lasts."""

    def __init__(self) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        return {
            "mean": round(sum(self.samples) / len(self.samples), 2),
            "max": round(max(self.samples), 2),
        }


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Arrival:
    offset_s: float
    tier: str


def schedule(rate: float, duration_s: float, tiers: list[dict], seed: int) -> list[Arrival]:
    """Poisson arrivals at ``rate`` per second for ``duration_s``, each with a tier drawn by
    share: the same list for every run with the same seed."""
    rng = random.Random(seed)
    names = [t["name"] for t in tiers]
    weights = [t["share"] for t in tiers]
    out: list[Arrival] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        out.append(Arrival(t, rng.choices(names, weights)[0]))


async def drive(
    port: int, arrivals: list[Arrival], prompt_tokens: int, output_tokens: int, timeout_s: float
) -> tuple[list[bench.Result], float]:
    from kubetier.lean_http.client import UpstreamPool

    bench.OUTPUT_TOKENS = output_tokens  # bench._one counts a shorter stream as an error
    pool = UpstreamPool("127.0.0.1", port, max_idle=20000, connect_timeout_s=10.0)
    # Token ids: an exact prompt length the router counts itself, as the engines do.
    body = json.dumps(
        {
            "model": MODEL,
            "prompt": [1000 + i for i in range(prompt_tokens)],
            "max_tokens": output_tokens,
            "stream": True,
        },
        separators=(",", ":"),
    ).encode()
    results = [bench.Result(a.tier) for a in arrivals]
    tasks = []
    start = time.monotonic()
    for a, res in zip(arrivals, results):
        delay = start + a.offset_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        headers = [("content-type", "application/json"), ("x-kubetier-tier", res.tier)]
        tasks.append(asyncio.ensure_future(bench._one(pool, "/v1/completions", body, headers, res, timeout_s)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    pool.close()
    return results, elapsed


def summarize(results: list[bench.Result], tiers: list[dict], output_tokens: int) -> dict:
    """Per-tier attainment (deadline-based at the first and the last token; 429, 503 and
    errors are misses) and the accounting of every request."""
    per_tier = {}
    for t in tiers:
        rs = [r for r in results if r.tier == t["name"]]
        met = late_first = 0
        ttft = []
        for r in rs:
            if r.error or r.tokens < output_tokens:
                continue
            first_ms = (r.first_at - r.sent_at) * 1000
            ttft.append(first_ms)
            if first_ms <= t["ttftMs"] and (r.last_at - r.sent_at) * 1000 <= t["ttftMs"] + (r.tokens - 1) * t["tpotMs"]:
                met += 1
            elif first_ms > t["ttftMs"]:
                late_first += 1
        per_tier[t["name"]] = {
            "requests": len(rs),
            "met": met,
            "attainment_percent": round(100.0 * met / len(rs), 2) if rs else None,
            "rejected_429": sum(1 for r in rs if r.status == 429),
            # Answered (or failed) but missed a deadline: not a refusal.
            "late": len(rs) - met - sum(1 for r in rs if r.status in (429, 503)),
            "late_first_token": late_first,  # of them: the first token already late
            "ttft_ms_p50": _r(percentile(ttft, 0.5)),
            "ttft_ms_p99": _r(percentile(ttft, 0.99)),
        }
    refused = [r for r in results if r.status in (429, 503)]
    answered = [r for r in results if r.status == 200 and not r.error and r.tokens >= output_tokens]
    return {
        "requests": len(results),
        "answered": len(answered),
        "rejected_429": sum(1 for r in refused if r.status == 429),
        "unavailable_503": sum(1 for r in refused if r.status == 503),
        # Accepted (not refused) but not answered in full: the "no request left behind" count.
        "accepted_not_answered": len(results) - len(answered) - len(refused),
        "error_examples": sorted({r.error for r in results if r.error and r.status not in (429, 503)})[:4],
        "tiers": per_tier,
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# --------------------------------------------------------------------------- summary


def compare(runs: list[dict], baseline: str, tier_names: list[str]) -> dict:
    """Per variant and tier: mean and spread of attainment over repeats, and the paired
    difference to ``baseline`` (same repeat) with a 95% interval and the verdict."""
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    out: dict = {"baseline": baseline, "criterion_pp": CRITERION_PP, "variants": {}}
    base = {r["repeat"]: r for r in runs if r["variant"] == baseline}
    for v in variants:
        rows = [r for r in runs if r["variant"] == v]
        entry: dict = {"repeats": len(rows), "tiers": {}}
        for t in tier_names:
            vals = [
                r["tiers"][t]["attainment_percent"] for r in rows if r["tiers"][t]["attainment_percent"] is not None
            ]
            e: dict = {
                "mean": _r(_mean(vals)),
                "min": _r(min(vals)) if vals else None,
                "max": _r(max(vals)) if vals else None,
                "sd": _r(_sd(vals)),
                "values": vals,
            }
            if v != baseline:
                diffs = [
                    r["tiers"][t]["attainment_percent"] - base[r["repeat"]]["tiers"][t]["attainment_percent"]
                    for r in rows
                    if r["repeat"] in base
                    and r["tiers"][t]["attainment_percent"] is not None
                    and base[r["repeat"]]["tiers"][t]["attainment_percent"] is not None
                ]
                e["paired_diffs_pp"] = [round(d, 2) for d in diffs]
                e["diff_mean_pp"] = _r(_mean(diffs))
                lo, hi = _interval(diffs)
                e["diff_95_interval_pp"] = [_r(lo), _r(hi)] if lo is not None else None
                e["verdict"] = verdict(lo, hi)
            entry["tiers"][t] = e
        out["variants"][v] = entry
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _sd(xs: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _interval(diffs: list[float]) -> tuple[float | None, float | None]:
    """95% interval of the mean paired difference (Student t); None with fewer than 2."""
    if len(diffs) < 2:
        return None, None
    m = sum(diffs) / len(diffs)
    sd = _sd(diffs) or 0.0
    half = _T975.get(len(diffs) - 1, 2.042) * sd / math.sqrt(len(diffs))
    return m - half, m + half


def verdict(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return "not resolved (one repeat)"
    if lo >= -CRITERION_PP and hi <= CRITERION_PP:
        return "within 1 pp"
    if hi < -CRITERION_PP:
        return "loses more than 1 pp"
    if lo > CRITERION_PP:
        return "gains more than 1 pp"
    return "not resolved (interval crosses +-1 pp)"


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kubetier router bench replicas", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--variants", default="1w,2r,3r", help="comma-separated; the first is the baseline (default: %(default)s)"
    )
    ap.add_argument(
        "--repeat", type=int, default=4, help="repeats; the order of variants alternates (default: %(default)s)"
    )
    ap.add_argument("--rate", type=float, default=12.0, help="arrivals per second (default: %(default)s)")
    ap.add_argument("--duration", type=float, default=45.0, help="seconds of arrivals per run (default: %(default)s)")
    ap.add_argument("--engines-per-tier", type=int, default=3, help="engine simulators per tier (default: %(default)s)")
    ap.add_argument(
        "--token-ms", type=float, default=100.0, help="engine time per token at batch 1 (default: %(default)s)"
    )
    ap.add_argument(
        "--batch-slowdown",
        type=float,
        default=1.0,
        help="the full batch's iteration is (1 + this) x --token-ms (default: %(default)s)",
    )
    ap.add_argument("--max-num-seqs", type=int, default=8, help="engine batch slots (default: %(default)s)")
    ap.add_argument("--output-tokens", type=int, default=16, help="tokens per stream (default: %(default)s)")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt tokens per request (default: %(default)s)")
    ap.add_argument(
        "--shares", default="0.34,0.33,0.33", help="interactive,standard,batch shares (default: %(default)s)"
    )
    ap.add_argument(
        "--scrape-interval", type=float, default=1.0, help="router /metrics scrape interval, s (default: %(default)s)"
    )
    ap.add_argument(
        "--baseline-src",
        default=None,
        help="source root (the directory holding the kubetier package, e.g. another checkout's operator/) "
        "the :base variants' routers run from",
    )
    ap.add_argument("--seed", type=int, default=1, help="the arrival schedule's seed, the same for every run")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after the routers answer, before a run")
    ap.add_argument(
        "--output",
        default=None,
        help="JSON results (default: bench-results/router-replicas-<UTC time>.json)",
    )
    return ap


def main(argv: list[str]) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        specs = [parse_variant(v, args.scrape_interval) for v in args.variants.split(",") if v]
    except ValueError as exc:
        ap.error(str(exc))
    if not specs:
        ap.error("--variants: at least one")
    if len({s.name for s in specs}) != len(specs):
        ap.error("--variants: each variant once")
    if any(s.baseline for s in specs) and not (
        args.baseline_src and os.path.isdir(os.path.join(args.baseline_src, "kubetier"))
    ):
        ap.error("a :base variant needs --baseline-src DIR with a kubetier package in DIR")
    shares = [float(x) for x in args.shares.split(",")]
    if len(shares) != len(TIER_SHAPES) or any(s < 0 for s in shares) or sum(shares) <= 0:
        ap.error(f"--shares: {len(TIER_SHAPES)} non-negative numbers")
    for name in ("repeat", "engines_per_tier", "max_num_seqs", "output_tokens", "prompt_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.output_tokens < 2:
        ap.error("--output-tokens must be at least 2")
    if args.rate <= 0 or args.duration <= 0 or args.token_ms <= 0:
        ap.error("--rate, --duration and --token-ms must be positive")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # SIGTERM (and SIGINT, which a shell's background job ignores) stop the run through
    # the same clean-up as its end: routers and engines are stopped, nothing is left behind.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    output = args.output or os.path.join(
        "bench-results", time.strftime("router-replicas-%Y%m%dT%H%M%SZ.json", time.gmtime())
    )

    tiers = tiers_for(args.token_ms, args.output_tokens, shares)
    tier_names = [t["name"] for t in tiers]
    profile = capacity_profile(args.token_ms, args.max_num_seqs, args.batch_slowdown)
    arrivals = schedule(args.rate, args.duration, tiers, args.seed)
    stream_s = args.output_tokens * args.token_ms / 1000.0
    out: dict = {
        "rig": {
            "cpus": os.cpu_count(),
            "profile": profile,
            "tiers": tiers,
            "engines_per_tier": args.engines_per_tier,
            "rate_per_s": args.rate,
            "duration_s": args.duration,
            "arrivals": len(arrivals),
            "arrivals_per_tier": {n: sum(1 for a in arrivals if a.tier == n) for n in tier_names},
            "streams_in_flight_at_batch1_speed": round(args.rate * stream_s, 1),
            "output_tokens": args.output_tokens,
            "prompt_tokens": args.prompt_tokens,
            "seed": args.seed,
            "baseline_src": args.baseline_src,
            "scrape_interval_s": args.scrape_interval,
            "pinning": "none (CPU is not meant to bind: router, engine and load-generator CPU shares are reported)",
        },
        "runs": [],
    }
    print(
        f"rig: {args.engines_per_tier} engines per tier, {args.token_ms:g} ms/token at batch 1, "
        f"{args.max_num_seqs} slots, {args.output_tokens} tokens/stream, {len(arrivals)} arrivals "
        f"({out['rig']['arrivals_per_tier']}) over {args.duration:g} s, "
        f"tiers {[(t['name'], t['ttftMs'], t['tpotMs']) for t in tiers]}",
        flush=True,
    )
    timeout_s = 120.0 + 3 * (tiers[-1]["ttftMs"] + args.output_tokens * tiers[-1]["tpotMs"]) / 1000.0
    with tempfile.TemporaryDirectory() as tmp:
        profile_path = os.path.join(tmp, "profile.yaml")
        with open(profile_path, "w") as f:
            yaml.safe_dump(profile, f)
        engines: list[tuple[str, subprocess.Popen, int]] = []
        try:
            for t in tier_names:
                for i in range(args.engines_per_tier):
                    port = bench._free_port()
                    p = _start(
                        [
                            "engine-sim",
                            "--port",
                            str(port),
                            "--model",
                            MODEL,
                            "--profile",
                            profile_path,
                            "--log-level",
                            "WARNING",
                            "--seed",
                            str(len(engines)),
                        ]
                    )
                    engines.append((f"{t}-{i}", p, port))
            for _, _, port in engines:
                bench._wait_up(port)
            cfg = {
                "models": [
                    {
                        "name": MODEL,
                        "profile": profile_path,
                        "tiers": [{k: v for k, v in t.items() if k != "share"} for t in tiers],
                        "servers": [
                            {"url": f"http://127.0.0.1:{port}", "tier": sid.rsplit("-", 1)[0], "id": sid}
                            for sid, _, port in engines
                        ],
                    }
                ]
            }
            cfg_path = os.path.join(tmp, "router.yaml")
            with open(cfg_path, "w") as f:
                yaml.safe_dump(cfg, f)
            for rep in range(args.repeat):
                order = specs if rep % 2 == 0 else specs[::-1]
                for spec in order:
                    row = _one_run(spec, cfg_path, engines, arrivals, args, timeout_s, tiers)
                    row["repeat"] = rep
                    out["runs"].append(row)
                    _print_row(row, tier_names)
        finally:
            _stop([p for _, p, _ in engines])
    out["comparison"] = compare(out["runs"], specs[0].name, tier_names)
    print()
    print_table(out["comparison"], tier_names)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nwrote {output}")
    return 0


def _one_run(spec: VariantSpec, cfg_path: str, engines, arrivals, args, timeout_s: float, tiers: list[dict]) -> dict:
    import uvloop

    _wait_idle(engines)
    routers = Routers(spec, cfg_path, args.baseline_src)
    try:
        routers.wait_up()
        time.sleep(max(args.settle, 2 * spec.scrape_s))  # every replica has scraped every engine
        sampler = LoadSampler()
        r0, e0, g0 = routers.cpu_s(), sum(_proc_cpu_s(p.pid) for _, p, _ in engines), _self_cpu_s()
        results, elapsed = uvloop.run(drive(routers.port, arrivals, args.prompt_tokens, args.output_tokens, timeout_s))
        r1, e1, g1 = routers.cpu_s(), sum(_proc_cpu_s(p.pid) for _, p, _ in engines), _self_cpu_s()
        load = sampler.stop()
        statuses = routers.statuses()
    finally:
        routers.stop()
    row = summarize(results, tiers, args.output_tokens)
    row["variant"] = spec.name
    row["processes"] = spec.processes
    row["workers"] = spec.workers
    row["scrape_interval_s"] = spec.scrape_s
    row["baseline_src"] = args.baseline_src if spec.baseline else None
    row["elapsed_s"] = round(elapsed, 2)
    row["cpu_percent"] = {
        "routers": round(100.0 * (r1 - r0) / elapsed, 1),
        "engines": round(100.0 * (e1 - e0) / elapsed, 1),
        "load_generator": round(100.0 * (g1 - g0) / elapsed, 1),
    }
    row["load_average_1m"] = load
    row["requests_per_replica"] = [
        None if s is None else sum(v["requests"] or 0 for k, v in s.items() if not k.startswith("_")) for s in statuses
    ]
    row["replica_status"] = statuses
    totals: dict[str, int] = {}
    for st in statuses:
        for k, v in ((st or {}).get("_view_checks") or {}).items():
            totals[k] = totals.get(k, 0) + v
    row["view_checks"] = totals
    return row


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _wait_idle(engines, timeout_s: float = 60.0) -> None:
    """Every engine idle (the previous run's streams gone) before the next run starts."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all((_engine_running(port) or 0.0) == 0.0 for _, _, port in engines):
            return
        time.sleep(0.2)


def _print_row(r: dict, tier_names: list[str]) -> None:
    att = "/".join(f"{r['tiers'][t]['attainment_percent']}" for t in tier_names)
    late = "/".join(f"{r['tiers'][t]['late']}({r['tiers'][t].get('late_first_token')})" for t in tier_names)
    print(
        f"  rep={r['repeat']} {r['variant']:>8} n={r['requests']} answered={r['answered']} 429={r['rejected_429']} "
        f"503={r['unavailable_503']} lost={r['accepted_not_answered']} attainment {att} "
        f"late {late} per replica {r['requests_per_replica']} cpu% {r['cpu_percent']} "
        f"load {r['load_average_1m']} view {r.get('view_checks')}",
        flush=True,
    )


def print_table(cmp: dict, tier_names: list[str]) -> None:
    print(
        f"per-tier attainment % over repeats (mean [min-max] sd); diff = variant - {cmp['baseline']} in the same repeat"
    )
    for v, e in cmp["variants"].items():
        print(f"{v}:")
        for t in tier_names:
            x = e["tiers"][t]
            line = f"  {t:>12} {x['mean']!s:>6} [{x['min']}-{x['max']}] sd {x['sd']}"
            if "diff_mean_pp" in x:
                line += f"  diff {x['diff_mean_pp']} pp, 95% {x['diff_95_interval_pp']}: {x['verdict']}"
            print(line)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
