"""``kubetier router bench``: the router in front of engine simulators under open-loop load.

For each concurrency level (streams in flight on average) the load generator runs
the same Poisson arrival schedule (and one bursty one) three ways: straight to the
engines ("direct"), through the router with 1 worker, and with 2 workers. It reports
per-tier SLO attainment and goodput, and the router's overhead: the added time to
first token and per token versus direct, p50/p99, plus errors and each process's CPU.

Rig (2 cores here): the router is pinned to core 0 (1 worker) or cores 0-1 (2
workers); the engines and the load generator (this process) are pinned to core 1.
Every process's CPU share is reported, so a saturated load generator or engine core
shows up in the table instead of being blamed on the router. The engines use a flat
profile (one token every 25 ms at any batch, short prefills nearly free), so added
latency is the router's and the rig's, not batching's.

The benchmark prints figures and writes JSON; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import yaml

from kubetier.policy.attainment import attainment_percent
from kubetier.router import bench_routing
from kubetier.stats import percentile


def flat_profile(token_ms: float) -> dict:
    return {
        "name": f"bench-flat-{token_ms:g}ms",
        "kvCapacityTokens": 50_000_000,
        "maxNumSeqs": 4096,
        "maxNumBatchedTokens": 8192,
        "decode": {
            "batchSizes": [1, 4096],
            "kvTokens": [0, 50_000_000],
            "iterationMs": [[token_ms, token_ms], [token_ms, token_ms]],
        },
        # A 128-token prompt adds 2% to the iteration carrying it: the SLO checks never
        # bind below ~1,900 streams per server, so the runs measure the data path.
        "prefill": {"tokens": [128, 8192], "ms": [token_ms * 1.02, token_ms * 1.6]},
        "power": {
            "idleWatts": 90,
            "tdpWatts": 700,
            "decodeWatts": {"batchSizes": [1], "watts": [300]},
            "prefillWatts": 600,
        },
        "sources": [
            "synthetic: flat time per token, a short prompt's prefill about one step (router overhead benchmark)"
        ],
    }


FLAT_PROFILE = flat_profile(25.0)

TIERS = [
    {"name": "interactive", "ttftMs": 300, "tpotMs": 40, "priority": 100, "meanOutputTokens": 64, "share": 0.2},
    {"name": "standard", "ttftMs": 1000, "tpotMs": 60, "priority": 50, "meanOutputTokens": 64, "share": 0.3},
    {
        "name": "batch",
        "ttftMs": 5000,
        "tpotMs": 200,
        "priority": 10,
        "meanOutputTokens": 64,
        "share": 0.5,
        "onLate": "queue",
    },
]
_BASE_TIERS = TIERS
OUTPUT_TOKENS = 64
PROMPT_TOKENS = 128
# One stream lasts about prefill + 64 tokens x 25 ms: concurrency = rate x duration.
STREAM_S = 0.040 + OUTPUT_TOKENS * 0.025


def _set_token_ms(token_ms: float) -> None:
    """Slower engines: tier targets scale with the token time, so the SLOs bind alike."""
    global FLAT_PROFILE, STREAM_S, TIERS
    FLAT_PROFILE = flat_profile(token_ms)
    STREAM_S = (OUTPUT_TOKENS + 1.5) * token_ms / 1000.0
    f = token_ms / 25.0
    # Whole milliseconds: tier targets are integers (kubetier.api.tier.SLOTier).
    TIERS = [dict(t, ttftMs=round(t["ttftMs"] * f), tpotMs=round(t["tpotMs"] * f)) for t in _BASE_TIERS]


TOKEN_MARK = b'"choices":[{'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PINNING = True
_TOKEN_MS = 25.0


def _pin(cores: set[int]):
    def f():
        if not _PINNING:
            return
        try:
            os.sched_setaffinity(0, cores)
        except (AttributeError, OSError):
            pass

    return f


def _cpu_seconds(pid: int, with_children: bool = False) -> float:
    """utime + stime of a process (and, if asked, of its live child processes)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    if with_children:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                pids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


@dataclass
class Result:
    tier: str
    sent_at: float = 0.0
    first_at: float = 0.0
    last_at: float = 0.0
    tokens: int = 0
    status: int = 0
    error: str = ""


@dataclass
class Run:
    label: str
    concurrency: int
    pattern: str
    results: list[Result] = field(default_factory=list)
    duration_s: float = 0.0
    cpu: dict = field(default_factory=dict)


async def _one(pool, path: str, body: bytes, headers, res: Result, timeout: float) -> None:
    from kubetier.lean_http.client import UpstreamError

    res.sent_at = time.monotonic()
    try:
        r = await pool.request("POST", path, body, headers, header_timeout_s=timeout)
        res.status = r.status
        if r.status != 200:
            await r.read_all(timeout=timeout)
            r.close()
            res.error = f"http {r.status}"
            return
        while True:
            data = await r.read_some(timeout)
            if not data:
                break
            n = data.count(TOKEN_MARK)
            if n:
                now = time.monotonic()
                if not res.first_at:
                    res.first_at = now
                res.last_at = now
                res.tokens += n
            if b'"error"' in data:
                res.error = "error event"
        r.close()
        if res.tokens < OUTPUT_TOKENS and not res.error:
            res.error = f"short stream ({res.tokens} tokens)"
    except UpstreamError as exc:
        res.error = str(exc)[:80]


def _schedule(rate: float, duration_s: float, pattern: str, rng: random.Random) -> list[float]:
    """Arrival offsets: Poisson, or bursty (on/off: 2x rate for 0.5 s, then 0 for 0.5 s)."""
    out = []
    t = 0.0
    while True:
        if pattern == "poisson":
            t += rng.expovariate(rate)
        else:
            t += rng.expovariate(rate * 2)
            if int(t / 0.5) % 2 == 1:  # an off half-second: jump to the next on period
                t = (int(t / 0.5) + 1) * 0.5
        if t >= duration_s:
            return out
        out.append(t)


async def _drive(
    targets: dict[str, tuple[str, int]], concurrency: int, duration_s: float, pattern: str, seed: int, model: str
) -> tuple[list[Result], float]:
    from kubetier.lean_http.client import UpstreamPool

    rng = random.Random(seed)
    rate = concurrency / STREAM_S
    offsets = _schedule(rate, duration_s, pattern, rng)
    names = [t["name"] for t in TIERS]
    weights = [t["share"] for t in TIERS]
    tiers = rng.choices(names, weights, k=len(offsets))
    pools = {tier: UpstreamPool(h, p, max_idle=20000, connect_timeout_s=10.0) for tier, (h, p) in targets.items()}
    # Token ids: an exact prompt length that the router counts itself (it ignores a
    # client's prompt_tokens figure) and the engines count alike.
    body = json.dumps(
        {
            "model": model,
            "prompt": [1000 + i for i in range(PROMPT_TOKENS)],
            "max_tokens": OUTPUT_TOKENS,
            "stream": True,
        },
        separators=(",", ":"),
    ).encode()
    results = [Result(t) for t in tiers]
    tasks = []
    start = time.monotonic()
    for off, res in zip(offsets, results):
        delay = start + off - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        headers = [("content-type", "application/json"), ("x-kubetier-tier", res.tier)]
        tasks.append(asyncio.ensure_future(_one(pools[res.tier], "/v1/completions", body, headers, res, 30.0)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    for p in pools.values():
        p.close()
    return results, elapsed


def summarize(run: Run) -> dict:
    ok = [r for r in run.results if not r.error and r.tokens >= 1]
    ttft = [(r.first_at - r.sent_at) * 1000 for r in ok]
    tpot = [(r.last_at - r.first_at) / (r.tokens - 1) * 1000 for r in ok if r.tokens > 1]
    tiers = {}
    met_total = 0
    for t in TIERS:
        rs = [r for r in run.results if r.tier == t["name"]]
        met = 0
        for r in rs:
            if r.error or not r.tokens:
                continue
            # Deadline-based, checked at the first and the last token.
            if (r.first_at - r.sent_at) * 1000 <= t["ttftMs"] and (r.last_at - r.sent_at) * 1000 <= t["ttftMs"] + (
                r.tokens - 1
            ) * t["tpotMs"]:
                met += 1
        met_total += met
        tiers[t["name"]] = {"requests": len(rs), "attainmentPercent": round(100.0 * met / len(rs), 2) if rs else None}
    rejected = sum(1 for r in run.results if r.status == 429)
    return {
        "label": run.label,
        "concurrency": run.concurrency,
        "pattern": run.pattern,
        "requests": len(run.results),
        "errors": len(run.results) - len(ok) - rejected,
        "rejected_429": rejected,
        "error_examples": sorted({r.error for r in run.results if r.error})[:3],
        "ttft_ms_p50": _r(percentile(ttft, 0.5)),
        "ttft_ms_p99": _r(percentile(ttft, 0.99)),
        "tpot_ms_p50": _r(percentile(tpot, 0.5)),
        "tpot_ms_p99": _r(percentile(tpot, 0.99)),
        "goodput_rps": round(met_total / run.duration_s, 1) if run.duration_s else None,
        "tiers": tiers,
        "cpu_percent": run.cpu,
        "duration_s": round(run.duration_s, 2),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


class Rig:
    """Engine simulators (one per tier) and, on demand, the router."""

    def __init__(self, tmp: str, model: str = "bench") -> None:
        self.tmp = tmp
        self.model = model
        self.profile_path = os.path.join(tmp, "flat.yaml")
        with open(self.profile_path, "w") as f:
            yaml.safe_dump(flat_profile(_TOKEN_MS), f)
        self.engines: dict[str, tuple[subprocess.Popen, int]] = {}
        self.router: subprocess.Popen | None = None
        self.router_port = 0

    def start_engines(self) -> None:
        for t in TIERS:
            port = _free_port()
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kubetier.cli",
                    "engine-sim",
                    "--port",
                    str(port),
                    "--model",
                    self.model,
                    "--profile",
                    self.profile_path,
                    "--log-level",
                    "WARNING",
                ],
                preexec_fn=_pin({1 % os.cpu_count()}),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.engines[t["name"]] = (p, port)
        for _, port in self.engines.values():
            _wait_up(port)

    def start_router(self, workers: int) -> None:
        cfg = {
            "models": [
                {
                    "name": self.model,
                    "profile": self.profile_path,
                    "tiers": [{k: v for k, v in t.items() if k != "share"} for t in TIERS],
                    "servers": [
                        {"url": f"http://127.0.0.1:{port}", "tier": name, "id": name}
                        for name, (_, port) in self.engines.items()
                    ],
                }
            ],
        }
        path = os.path.join(self.tmp, "router.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        self.router_port = _free_port()
        cores = {0} if workers == 1 else set(range(min(2, os.cpu_count() or 1)))
        self.router = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubetier.cli",
                "router",
                "--port",
                str(self.router_port),
                "--config",
                path,
                "--workers",
                str(workers),
                "--log-level",
                "WARNING",
            ],
            preexec_fn=_pin(cores),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_up(self.router_port)
        time.sleep(1.5)  # first scrape: servers ready

    def stop_router(self) -> None:
        if self.router is not None:
            self.router.send_signal(signal.SIGTERM)
            try:
                self.router.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.router.pid, signal.SIGKILL)
                self.router.wait()
            self.router = None

    def stop(self) -> None:
        self.stop_router()
        for p, _ in self.engines.values():
            p.send_signal(signal.SIGTERM)
        for p, _ in self.engines.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    def cpu_snapshot(self) -> dict[str, float]:
        snap = {
            "loadgen": _cpu_seconds(os.getpid()),
            "engines": sum(_cpu_seconds(p.pid) for p, _ in self.engines.values()),
        }
        if self.router is not None:
            snap["router"] = _cpu_seconds(self.router.pid, with_children=True)  # its workers
        return snap


def _wait_up(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port} within {timeout} s")


def _measure(rig: Rig, label: str, targets: dict, concurrency: int, duration_s: float, pattern: str, seed: int) -> dict:
    import uvloop

    status_before = _router_status(rig.router_port, rig.model) if rig.router is not None else None
    before = rig.cpu_snapshot()
    results, elapsed = uvloop.run(_drive(targets, concurrency, duration_s, pattern, seed, rig.model))
    after = rig.cpu_snapshot()
    run = Run(
        label,
        concurrency,
        pattern,
        results,
        elapsed,
        {k: round(100.0 * (after[k] - before.get(k, 0.0)) / elapsed, 1) for k in after},
    )
    row = summarize(run)
    tokens = sum(r.tokens for r in results)
    row["tokens_relayed"] = tokens
    # CPU per token is what contention hides least: the time the process actually ran.
    for who in ("router", "engines", "loadgen"):
        if who in after and tokens:
            row[f"{who}_cpu_us_per_token"] = round((after[who] - before.get(who, 0.0)) / tokens * 1e6, 2)
    # Other tenants of this machine show up here: a load average above the core count
    # means every figure of this run includes waiting for a CPU.
    row["load_average_1m"] = round(os.getloadavg()[0], 2)
    if rig.router is not None:
        row["router_status"] = _status_delta(status_before, _router_status(rig.router_port, rig.model))
    return row


_STATUS_COUNTS = ("requests", "completed", "sloMet", "spilled", "rejected", "failed", "retries")


def _status_delta(before: dict | None, after: dict | None) -> dict | None:
    """This run's share of the router's cumulative per-tier tallies."""
    if after is None:
        return None
    out = {}
    for tier, a in after.items():
        b = (before or {}).get(tier, {})
        d = {k: a[k] - b.get(k, 0) for k in _STATUS_COUNTS}
        # One definition of attainment (kubetier.policy.attainment): 429s and failures are misses.
        pct = attainment_percent(min(d["sloMet"], d["completed"]), d["completed"], d["rejected"], d["failed"])
        d["attainmentPercent"] = None if pct is None else round(pct, 2)
        out[tier] = d
    return out


def _router_status(port: int, model: str) -> dict | None:
    """The router's own per-tier tallies (one worker's, when there are several)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
            s.sendall(b"GET /kubetier/status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        return {t: {k: v[k] for k in _STATUS_COUNTS} for t, v in body["models"][model]["tiers"].items()}
    except (OSError, ValueError, KeyError, IndexError):
        return None


def main(argv: list[str]) -> int:
    if argv and argv[0] == "compare":
        from kubetier.router.bench_compare import main as compare_main

        return compare_main(argv[1:])
    if argv and argv[0] == "replicas":
        from kubetier.router.bench_replicas import main as replicas_main

        return replicas_main(argv[1:])
    ap = argparse.ArgumentParser(
        prog="kubetier router bench",
        description=__doc__,
        epilog="`kubetier router bench compare --help`: side by side with the Rust vllm-router; "
        "`kubetier router bench replicas --help`: N router replicas against one router.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--output", default=None, help="write the results as JSON here")
    ap.add_argument(
        "--concurrency", default="100,1000,3000", help="comma-separated stream counts (default: %(default)s)"
    )
    ap.add_argument("--duration", type=float, default=6.0, help="seconds of arrivals per run (default: %(default)s)")
    ap.add_argument("--workers", default="1,2", help="router worker counts to compare (default: %(default)s)")
    ap.add_argument("--routing-steps", type=int, default=20_000, help="decisions per routing micro-benchmark")
    ap.add_argument("--skip-routing", action="store_true", help="skip the routing-decision micro-benchmark")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-pin", action="store_true", help="let the OS place every process (no CPU pinning)")
    ap.add_argument(
        "--token-ms",
        type=float,
        default=25.0,
        help="engine time per token (default: %(default)s; larger = fewer tokens/s per stream)",
    )
    args = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    global _TOKEN_MS
    _TOKEN_MS = args.token_ms
    _set_token_ms(args.token_ms)
    levels = [int(x) for x in args.concurrency.split(",") if x]
    worker_counts = [int(x) for x in args.workers.split(",") if x]
    out: dict = {
        "rig": {
            "cpus": os.cpu_count(),
            "engine_profile": FLAT_PROFILE["name"],
            "token_ms": args.token_ms,
            "output_tokens": OUTPUT_TOKENS,
            "prompt_tokens": PROMPT_TOKENS,
            "duration_s": args.duration,
            "pinning": "router: core 0 (1 worker) or cores 0-1 (2 workers); engines + load generator: core 1",
        }
    }

    out["tiers"] = TIERS
    if not args.skip_routing:
        print("routing decision + load-state update (µs), shipped H100 profile, three tiers:")
        rows = bench_routing.run(steps=args.routing_steps)
        bench_routing.print_table(rows)
        out["routing_decision"] = rows
        print()

    global _PINNING
    _PINNING = not args.no_pin
    if args.no_pin:
        out["rig"]["pinning"] = "none"
    else:
        _pin({1 % (os.cpu_count() or 1)})()  # the load generator shares core 1 with the engines
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(tmp)
        try:
            rig.start_engines()
            direct_targets = {name: ("127.0.0.1", port) for name, (_, port) in rig.engines.items()}
            for c in levels:
                rows.append(_measure(rig, "direct", direct_targets, c, args.duration, "poisson", args.seed))
                _print_row(rows[-1])
            for w in worker_counts:
                rig.start_router(w)
                try:
                    tgt = {t["name"]: ("127.0.0.1", rig.router_port) for t in TIERS}
                    for c in levels:
                        rows.append(_measure(rig, f"router-{w}w", tgt, c, args.duration, "poisson", args.seed))
                        _print_row(rows[-1])
                    if 1000 in levels or levels:
                        c = 1000 if 1000 in levels else levels[0]
                        rows.append(_measure(rig, f"router-{w}w", tgt, c, args.duration, "bursty", args.seed))
                        _print_row(rows[-1])
                finally:
                    rig.stop_router()
        finally:
            rig.stop()
    out["runs"] = rows
    out["overhead"] = _overhead(rows)
    print()
    print_tables(out)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.output}")
    return 0


def _overhead(rows: list[dict]) -> list[dict]:
    direct = {r["concurrency"]: r for r in rows if r["label"] == "direct"}
    out = []
    for r in rows:
        d = direct.get(r["concurrency"])
        if r["label"] == "direct" or d is None or r["pattern"] != "poisson":
            continue

        def diff(k, r=r, d=d):
            return None if r[k] is None or d[k] is None else round(r[k] - d[k], 2)

        out.append(
            {
                "label": r["label"],
                "concurrency": r["concurrency"],
                "added_ttft_ms_p50": diff("ttft_ms_p50"),
                "added_ttft_ms_p99": diff("ttft_ms_p99"),
                "added_tpot_ms_p50": diff("tpot_ms_p50"),
                "added_tpot_ms_p99": diff("tpot_ms_p99"),
                "errors": r["errors"],
                "router_cpu_percent": r["cpu_percent"].get("router"),
                "router_cpu_us_per_token": r.get("router_cpu_us_per_token"),
                "load_average_1m": r.get("load_average_1m"),
            }
        )
    return out


def _print_row(r: dict) -> None:
    tiers = " ".join(f"{k}={v['attainmentPercent']}%" for k, v in r["tiers"].items())
    print(
        f"  {r['label']:>10} c={r['concurrency']:<5} {r['pattern']:<7} n={r['requests']:<6} err={r['errors']:<4} "
        f"429={r['rejected_429']:<4} "
        f"ttft p50/p99={r['ttft_ms_p50']}/{r['ttft_ms_p99']} ms tpot p50/p99={r['tpot_ms_p50']}/{r['tpot_ms_p99']} ms "
        f"goodput={r['goodput_rps']}/s {tiers} cpu={r['cpu_percent']}",
        flush=True,
    )


def print_tables(out: dict) -> None:
    print("router overhead vs direct (ms, client-side):")
    print(
        f"{'run':>10} {'streams':>7} {'+TTFT p50':>9} {'+TTFT p99':>9} {'+TPOT p50':>9} {'+TPOT p99':>9} {'errors':>6} "
        f"{'router CPU%':>11} {'CPU us/token':>12} {'load avg':>8}"
    )
    for o in out["overhead"]:
        print(
            f"{o['label']:>10} {o['concurrency']:>7} {o['added_ttft_ms_p50']!s:>9} {o['added_ttft_ms_p99']!s:>9} "
            f"{o['added_tpot_ms_p50']!s:>9} {o['added_tpot_ms_p99']!s:>9} {o['errors']:>6} {o['router_cpu_percent']!s:>11} "
            f"{o['router_cpu_us_per_token']!s:>12} {o['load_average_1m']!s:>8}"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
