"""``kubetier router bench compare``: kubetier's router and the Rust ``vllm-router`` side by
side in one run: same engines, same arrival schedule, same pinning, runs alternated.

``vllm-router`` (PyPI ``vllm-router``, a Rust router with a Python launcher) is never a
kubetier dependency: install it into a separate environment and pass its executable,
e.g. ``python -m venv .bench-venv && .bench-venv/bin/pip install vllm-router==0.1.17``,
then ``--vllm-router .bench-venv/bin/vllm-router``.

Variants (all started once and kept running; each run drives one of them):

- ``direct``: the load generator talks to the engines (the floor);
- ``kubetier-1w`` / ``vllm-router-1c``: one kubetier worker / vllm-router, pinned to core 0;
- ``kubetier-2w`` / ``vllm-router-2c``: two kubetier workers (SO_REUSEPORT, shared metrics)
  / vllm-router, pinned to cores 0-1;
- ``kubetier-2r``: two independent kubetier routers (replicas: no shared state, each sees
  the fleet through its own accounting and the engines' metrics) behind one port
  (SO_REUSEPORT, as a Service spreads connections), pinned to cores 0-1.

Engines and the load generator share the last core. Per run: CPU per relayed token
(exact on-CPU time from the scheduler, every thread of the router's processes; user and
system apart as the kernel samples them at the clock tick), the ratio to vllm-router on
the exact figure, syscalls per token
(``perf stat -e raw_syscalls:sys_enter`` on the router's processes, when perf works),
client-side TTFT/TPOT p50/p99 and per-tier attainment (deadline-based, 429s and errors
are misses), and the 1-minute load average. The machine may be shared: the order of
variants is rotated between repeats (each takes each slot once per N repeats), and ratios are taken within one repeat.

Prints figures and writes JSON; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

from kubetier.router import bench
from kubetier.stats import percentile


def _proc_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (all its threads) and its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    user = system = 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            user += int(parts[11]) / tick
            system += int(parts[12]) / tick
        except (OSError, IndexError, ValueError):
            pass
    return user, system


def _schedstat_s(pids: list[int], field: int) -> float:
    """One /proc/PID/task/TID/schedstat field summed over every thread of processes, in
    seconds: 0 = time on a CPU, 1 = time runnable but waiting for one."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[field])
            except (OSError, ValueError, IndexError):
                pass
    return total / 1e9


def _on_cpu_s(pids: list[int]) -> float:
    """Exact on-CPU seconds of processes (scheduler accounting, in ns). /proc/PID/stat's
    user/system split is sampled at the clock tick (a few hundred ticks per run here), so
    the total that decides a comparison comes from the scheduler."""
    return _schedstat_s(pids, 0)


def _run_delay_s(pids: list[int]) -> float:
    """Seconds the threads of processes spent runnable but waiting for a CPU: a router
    short of CPU because others use its core shows here."""
    return _schedstat_s(pids, 1)


def _all_pids(pid: int) -> list[int]:
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return pids


class SyscallCounter:
    """``perf stat`` counting syscalls of some processes while a run lasts (None if perf fails)."""

    def __init__(self, pids: list[int]) -> None:
        self.proc: subprocess.Popen | None = None
        perf = shutil.which("perf")
        if perf is None or not pids:
            return
        self.proc = subprocess.Popen(
            [perf, "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", ",".join(map(str, pids))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and "raw_syscalls:sys_enter" in line and fields[0].strip().isdigit():
                return int(fields[0])
        return None


class Variant:
    def __init__(self, name: str, procs: list[subprocess.Popen], port: int) -> None:
        self.name = name
        self.procs = procs
        self.port = port

    def pids(self) -> list[int]:
        out: list[int] = []
        for p in self.procs:
            out += _all_pids(p.pid)
        return out

    def times(self) -> tuple[float, float]:
        u = s = 0.0
        for p in self.procs:
            a, b = _proc_times(p.pid)
            u += a
            s += b
        return u, s

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _kubetier_router(
    cfg_path: str, port: int, cores: set[int], workers: int = 1, reuse: bool = False, python: str | None = None
) -> subprocess.Popen:
    args = [python or sys.executable, "-m", "kubetier.cli", "router", "--port", str(port), "--config", cfg_path]
    # One load generator is one client address: lift the per-address connection cap.
    args += ["--workers", str(workers), "--log-level", "WARNING", "--no-access-log"]
    args += ["--max-connections-per-client", "100000", "--max-connections", "100000"]
    if reuse:
        args.append("--reuse-port")
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # replicas share nothing
    return subprocess.Popen(
        args,
        preexec_fn=bench._pin(cores),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )


def _vllm_router(exe: str, port: int, engine_ports: list[int], cores: set[int]) -> subprocess.Popen:
    args = [exe, "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin"]
    args += ["--worker-urls", *[f"http://127.0.0.1:{p}" for p in engine_ports]]
    args += ["--prometheus-port", str(bench._free_port()), "--log-level", "warning"]
    args += ["--max-concurrent-requests", "100000", "--queue-size", "10000", "--disable-retries"]
    return subprocess.Popen(
        args,
        preexec_fn=bench._pin(cores),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _summary(results: list, elapsed: float) -> dict:
    """Client-side figures of one run; attainment counts 429s and errors as misses."""
    ok = [r for r in results if not r.error and r.tokens >= 1]
    ttft = [(r.first_at - r.sent_at) * 1000 for r in ok]
    tpot = [(r.last_at - r.first_at) / (r.tokens - 1) * 1000 for r in ok if r.tokens > 1]
    tiers = {}
    for t in bench.TIERS:
        rs = [r for r in results if r.tier == t["name"]]
        met = sum(
            1
            for r in rs
            if not r.error
            and r.tokens
            and (r.first_at - r.sent_at) * 1000 <= t["ttftMs"]
            and (r.last_at - r.sent_at) * 1000 <= t["ttftMs"] + (r.tokens - 1) * t["tpotMs"]
        )
        tiers[t["name"]] = round(100.0 * met / len(rs), 2) if rs else None
    return {
        "requests": len(results),
        "rejected_429": sum(1 for r in results if r.status == 429),
        "unavailable_503": sum(1 for r in results if r.status == 503),
        "errors": sum(1 for r in results if r.error and r.status not in (429, 503)),
        "tokens": sum(r.tokens for r in results),
        "ttft_ms_p50": _r(percentile(ttft, 0.5)),
        "ttft_ms_p99": _r(percentile(ttft, 0.99)),
        "tpot_ms_p50": _r(percentile(tpot, 0.5)),
        "tpot_ms_p99": _r(percentile(tpot, 0.99)),
        "attainment": tiers,
        "error_examples": sorted({r.error for r in results if r.error})[:4],
        "duration_s": round(elapsed, 2),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


async def _get_status(pool, model: str) -> dict | None:
    """One model's part of a kubetier router's ``/kubetier/status`` (None if unreadable)."""
    from kubetier.lean_http.client import UpstreamError

    try:
        r = await pool.request("GET", "/kubetier/status", header_timeout_s=5.0)
        body = await r.read_all(timeout=5.0)
        r.close()
        return json.loads(body)["models"][model]
    except (UpstreamError, ValueError, KeyError, OSError):
        return None


async def _get_metrics(ports: list[int]) -> list[bytes]:
    from kubetier.lean_http.client import UpstreamError, UpstreamPool

    out = []
    for port in ports:
        pool = UpstreamPool("127.0.0.1", port)
        try:
            r = await pool.request("GET", "/metrics", header_timeout_s=5.0)
            out.append(await r.read_all(timeout=5.0))
            r.close()
        except (UpstreamError, OSError):
            out.append(b"")
        finally:
            pool.close()
    return out


def _histogram(texts: list[bytes], name: str) -> tuple[dict[float, float], float, float]:
    """(cumulative buckets by upper bound, sum, count) of a Prometheus histogram, summed
    over every label set and every text."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    prefix = name.encode()
    for text in texts:
        for line in text.split(b"\n"):
            if not line.startswith(prefix):
                continue
            rest = line[len(prefix) :]
            try:
                value = float(line.rsplit(b" ", 1)[1])
                if rest.startswith(b"_bucket"):
                    le = float(line.split(b'le="', 1)[1].split(b'"', 1)[0])
                    buckets[le] = buckets.get(le, 0.0) + value
                elif rest.startswith(b"_sum"):
                    total += value
                elif rest.startswith(b"_count"):
                    count += value
            except (IndexError, ValueError):
                continue
    return buckets, total, count


def _ttft_in_run(before: list[bytes], after: list[bytes], name: str) -> dict | None:
    """Mean (exact) and p50/p90 (interpolated in the buckets) of a TTFT histogram over
    one run: where along the path the first token's time went."""
    b0, s0, n0 = _histogram(before, name)
    b1, s1, n1 = _histogram(after, name)
    n = n1 - n0
    if n <= 0:
        return None
    out: dict[str, float | None] = {"n": int(n), "mean_ms": round((s1 - s0) / n * 1000, 1)}
    bounds = sorted(b1)
    for q in (0.5, 0.9):
        target, prev_b, prev_c = q * n, 0.0, 0.0
        for ub in bounds:
            c = b1[ub] - b0.get(ub, 0.0)
            if c >= target:
                if ub == float("inf"):
                    out[f"p{int(q * 100)}_ms"] = None
                else:
                    frac = (target - prev_c) / (c - prev_c) if c > prev_c else 1.0
                    out[f"p{int(q * 100)}_ms"] = round((prev_b + frac * (ub - prev_b)) * 1000, 1)
                break
            prev_b, prev_c = ub, c
    return out


async def _drive_watched(
    targets: dict,
    concurrency: int,
    duration: float,
    seed: int,
    model: str,
    status_port: int | None,
    engine_ports: list[int] | None = None,
    cpu_s=None,
) -> tuple[list, float, dict | None]:
    """The load generator's run; for a kubetier router also its status before, every
    ``_SAMPLE_S`` during and after the run (the policy's view: see :func:`router_view`),
    and the time to first token as the engines and the router saw it (their histograms)."""
    from kubetier.lean_http.client import UpstreamPool

    engines0 = await _get_metrics(engine_ports or [])
    if status_port is None:
        results, elapsed = await bench._drive(targets, concurrency, duration, "poisson", seed, model)
        engines1 = await _get_metrics(engine_ports or [])
        split = {"engine": _ttft_in_run(engines0, engines1, "vllm:time_to_first_token_seconds")}
        return results, elapsed, {"ttft_split": split}
    router0 = await _get_metrics([status_port])
    pool = UpstreamPool("127.0.0.1", status_port)
    before = await _get_status(pool, model)
    samples: list[dict] = []
    stop = asyncio.Event()

    cpu: list[tuple[float, float, float]] = []  # (seconds since start, router on-CPU s, runnable-waiting s)

    async def sample() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            if cpu_s is not None:
                cpu.append((time.monotonic() - t0, *cpu_s()))
            st = await _get_status(pool, model)
            if st is not None:
                samples.append({"t": round(time.monotonic() - t0, 2), **st})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), _SAMPLE_S)

    sampler = asyncio.ensure_future(sample())
    try:
        results, elapsed = await bench._drive(targets, concurrency, duration, "poisson", seed, model)
    finally:
        stop.set()
        await sampler
    after = await _get_status(pool, model)
    pool.close()
    engines1 = await _get_metrics(engine_ports or [])
    router1 = await _get_metrics([status_port])
    view = router_view(before, samples, after) or {}
    if len(cpu) > 2:
        # The router's CPU while arrivals last (the whole run's average also counts the
        # drain, when few streams are left: it understates how busy the router was).
        inside = [x for x in cpu if x[0] <= duration]
        if len(inside) > 1:
            span = inside[-1][0] - inside[0][0]
            view["router_cpu_percent_arrivals"] = round(100.0 * (inside[-1][1] - inside[0][1]) / span, 1)
            # share of that time the router was runnable but another process had its core
            view["router_runqueue_percent_arrivals"] = round(100.0 * (inside[-1][2] - inside[0][2]) / span, 1)
        steps = [100.0 * (b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(cpu, cpu[1:]) if b[0] > a[0]]
        view["router_cpu_percent_max_0_5s"] = round(max(steps), 1)
        # per sample interval: (end, running %, runnable-but-waiting %) of the router
        view["router_cpu_timeline"] = [
            (
                round(y[0], 2),
                round(100.0 * (y[1] - x[1]) / (y[0] - x[0]), 1),
                round(100.0 * (y[2] - x[2]) / (y[0] - x[0]), 1),
            )
            for x, y in zip(cpu, cpu[1:])
            if y[0] > x[0]
        ]
    view["ttft_split"] = {
        "engine": _ttft_in_run(engines0, engines1, "vllm:time_to_first_token_seconds"),
        "router": _ttft_in_run(router0, router1, "kubetier_router_ttft_seconds"),
    }
    return results, elapsed, view


_SAMPLE_S = 0.5


def router_view(before: dict | None, samples: list[dict], after: dict | None) -> dict | None:
    """What the router's policy did in one run, from its status document: decisions by
    tier and outcome (this run's share), queue waits, the learned latency scale over the
    run, and its in-flight count per server against the engine's own (router's count
    just before each scrape minus what the engine reported). None for a router that does
    not report them (an older build)."""
    if after is None or "decisions" not in after:
        return None
    b = (before or {}).get("decisions") or {}
    decisions: dict[str, dict[str, int]] = {}
    waits: dict[str, dict] = {}
    for tier, d in after["decisions"].items():
        bo = (b.get(tier) or {}).get("outcomes", {})
        decisions[tier] = {k: v - bo.get(k, 0) for k, v in d["outcomes"].items() if v - bo.get(k, 0)}
        n = d["queued"] - (b.get(tier) or {}).get("queued", 0)
        w = d["queueWaitSeconds"] - (b.get(tier) or {}).get("queueWaitSeconds", 0.0)
        waits[tier] = {"queued": n, "mean_wait_s": round(w / n, 3) if n else None}
    scales = [s["latencyScale"] for s in samples if "latencyScale" in s]
    drift: dict[str, list[int]] = {}
    seen: set[tuple[str, int, int]] = set()
    running: dict[str, list[int]] = {}
    for s in samples:
        for srv in s.get("servers", []):
            running.setdefault(srv["id"], []).append(srv["running"])
            er, rr = srv.get("engineRunning"), srv.get("routerRunningAtScrape")
            if er is None or rr is None or (srv["id"], er, rr) in seen:
                continue
            seen.add((srv["id"], er, rr))
            drift.setdefault(srv["id"], []).append(rr - er)
    return {
        "decisions": decisions,
        "queue": waits,
        "latency_scale": {
            "start": (before or {}).get("latencyScale"),
            "max": max(scales) if scales else None,
            "end": after.get("latencyScale"),
            "samples": scales,
        },
        "running_router_minus_engine": {
            sid: {"mean": round(sum(v) / len(v), 1), "min": min(v), "max": max(v), "n": len(v)}
            for sid, v in drift.items()
        },
        "running_router_mean": {sid: round(sum(v) / len(v), 1) for sid, v in running.items()},
    }


def _run(
    variant: Variant | None,
    targets: dict,
    concurrency: int,
    duration: float,
    seed: int,
    model: str,
    status_port: int | None = None,
    engine_ports: list[int] | None = None,
) -> dict:
    import uvloop

    load_before = os.getloadavg()[0]
    t0 = variant.times() if variant else (0.0, 0.0)
    c0 = _on_cpu_s(variant.pids()) if variant else 0.0
    counter = SyscallCounter(variant.pids()) if variant else None
    cpu_s = (lambda: (_on_cpu_s(variant.pids()), _run_delay_s(variant.pids()))) if variant else None
    results, elapsed, view = uvloop.run(
        _drive_watched(targets, concurrency, duration, seed, model, status_port, engine_ports, cpu_s)
    )
    syscalls = counter.stop() if counter else None
    t1 = variant.times() if variant else (0.0, 0.0)
    c1 = _on_cpu_s(variant.pids()) if variant else 0.0
    row = _summary(results, elapsed)
    row["variant"] = variant.name if variant else "direct"
    row["concurrency"] = concurrency
    row["load_average_1m"] = round((load_before + os.getloadavg()[0]) / 2, 2)
    if view:
        ttft = [(r.first_at - r.sent_at) * 1000 for r in results if not r.error and r.tokens]
        if ttft:
            view.setdefault("ttft_split", {})["client"] = {"n": len(ttft), "mean_ms": round(sum(ttft) / len(ttft), 1)}
        row["router_view"] = view
    tok = row["tokens"]
    if variant and tok:
        row["cpu_user_us_per_token"] = round((t1[0] - t0[0]) / tok * 1e6, 2)
        row["cpu_sys_us_per_token"] = round((t1[1] - t0[1]) / tok * 1e6, 2)
        row["cpu_us_per_token"] = round(row["cpu_user_us_per_token"] + row["cpu_sys_us_per_token"], 2)
        row["cpu_exact_us_per_token"] = round((c1 - c0) / tok * 1e6, 2)
        row["cpu_exact_us_per_request"] = round((c1 - c0) / len(results) * 1e6, 1)
        row["router_cpu_percent"] = round(100.0 * ((t1[0] - t0[0]) + (t1[1] - t0[1])) / elapsed, 1)
        row["syscalls_per_token"] = round(syscalls / tok, 2) if syscalls is not None else None
    return row


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="kubetier router bench compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--vllm-router", default=None, help="the vllm-router executable (from its own venv)")
    ap.add_argument("--concurrency", default="100,1000", help="stream counts (default: %(default)s)")
    ap.add_argument("--duration", type=float, default=6.0, help="seconds of arrivals per run")
    ap.add_argument("--repeat", type=int, default=2, help="alternating repeats per level")
    ap.add_argument(
        "--variants",
        default="kubetier-1w,vllm-router-1c,kubetier-2w,vllm-router-2c,kubetier-2r",
        help="which routers (default: %(default)s); direct always runs",
    )
    ap.add_argument("--token-ms", type=float, default=25.0)
    ap.add_argument(
        "--output-tokens",
        type=int,
        default=bench.OUTPUT_TOKENS,
        help="tokens per stream (default: %(default)s); two runs at, e.g., 4 and 64 split CPU per "
        "request from CPU per token: per request = a + b x tokens",
    )
    ap.add_argument(
        "--baseline-python",
        default=None,
        help="an interpreter whose environment holds another kubetier build (e.g. an older checkout's "
        ".venv/bin/python): adds the variant kubetier-1w-baseline, that build's router with 1 worker on "
        "core 0, for a before/after comparison in one run",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.output_tokens < 2:
        ap.error("--output-tokens must be at least 2")
    bench._TOKEN_MS = args.token_ms
    bench.OUTPUT_TOKENS = args.output_tokens
    bench._set_token_ms(args.token_ms)
    names = [v for v in args.variants.split(",") if v]
    if args.baseline_python and "kubetier-1w-baseline" not in names:
        names.append("kubetier-1w-baseline")
    if any(v.startswith("vllm-router") for v in names) and not args.vllm_router:
        ap.error("--vllm-router EXE is needed for the vllm-router variants (or leave them out of --variants)")
    ncpu = os.cpu_count() or 1
    core0, both, last = {0}, set(range(min(2, ncpu))), {ncpu - 1 if ncpu > 1 else 0}
    bench._pin(last)()  # the load generator shares the last core with the engines
    levels = [int(x) for x in args.concurrency.split(",") if x]
    out: dict = {
        "rig": {
            "cpus": ncpu,
            "token_ms": args.token_ms,
            "output_tokens": bench.OUTPUT_TOKENS,
            "prompt_tokens": bench.PROMPT_TOKENS,
            "duration_s": args.duration,
            "pinning": "1w/1c: core 0; 2w/2c/2r: cores 0-1; engines + load generator: last core",
            "vllm_router": args.vllm_router,
        },
        "runs": [],
    }
    variants: dict[str, Variant] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rig = bench.Rig(tmp)
        try:
            rig.start_engines()
            engine_ports = [port for _, port in rig.engines.values()]
            cfg = {
                "models": [
                    {
                        "name": rig.model,
                        "profile": rig.profile_path,
                        "tiers": [{k: v for k, v in t.items() if k != "share"} for t in bench.TIERS],
                        "servers": [
                            {"url": f"http://127.0.0.1:{port}", "tier": name, "id": name}
                            for name, (_, port) in rig.engines.items()
                        ],
                    }
                ]
            }
            cfg_path = os.path.join(tmp, "router.yaml")
            with open(cfg_path, "w") as f:
                yaml.safe_dump(cfg, f)
            for name in names:
                port = bench._free_port()
                if name == "kubetier-1w":
                    procs = [_kubetier_router(cfg_path, port, core0)]
                elif name == "kubetier-1w-baseline":
                    if not args.baseline_python:
                        ap.error("kubetier-1w-baseline needs --baseline-python")
                    procs = [_kubetier_router(cfg_path, port, core0, python=args.baseline_python)]
                elif name == "kubetier-2w":
                    procs = [_kubetier_router(cfg_path, port, both, workers=2)]
                elif name == "kubetier-2r":
                    procs = [_kubetier_router(cfg_path, port, both, reuse=True) for _ in range(2)]
                elif name == "vllm-router-1c":
                    procs = [_vllm_router(args.vllm_router, port, engine_ports, core0)]
                elif name == "vllm-router-2c":
                    procs = [_vllm_router(args.vllm_router, port, engine_ports, both)]
                else:
                    ap.error(f"unknown variant {name!r}")
                variants[name] = Variant(name, procs, port)
            for v in variants.values():
                bench._wait_up(v.port)
            time.sleep(2.0)  # first health checks: every server ready
            direct = {name: ("127.0.0.1", port) for name, (_, port) in rig.engines.items()}
            for c in levels:
                for rep in range(args.repeat):
                    # Rotated, not reversed: with three or more runs per repeat, reversing
                    # kept the middle one in the middle every time, and the same build run
                    # in two slots (an A/A test at 1,000 streams) differed by 5-27 points
                    # on the tightest tier by slot alone (docs/router.md, issue 18 section).
                    order: list[str | None] = [None, *names]
                    k = rep % len(order)
                    order = order[k:] + order[:k]
                    for name in order:
                        if name is None:
                            row = _run(None, direct, c, args.duration, args.seed + rep, rig.model, None, engine_ports)
                        else:
                            v = variants[name]
                            tgt = {t["name"]: ("127.0.0.1", v.port) for t in bench.TIERS}
                            # one status port per variant: replicas each have their own view
                            watch = v.port if name.startswith("kubetier") else None
                            row = _run(v, tgt, c, args.duration, args.seed + rep, rig.model, watch, engine_ports)
                        row["repeat"] = rep
                        out["runs"].append(row)
                        _print_row(row)
        finally:
            for v in variants.values():
                v.stop()
            rig.stop()
    out["comparison"] = compare(out["runs"])
    print()
    print_table(out["comparison"])
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.output}")
    return 0


def compare(runs: list[dict]) -> list[dict]:
    """Per repeat and level: each router against direct (added latency, attainment) and
    each kubetier variant's CPU per token as a ratio of vllm-router's with the same cores."""
    rows = []
    keys = sorted({(r["concurrency"], r["repeat"]) for r in runs})
    for c, rep in keys:
        group = {r["variant"]: r for r in runs if r["concurrency"] == c and r["repeat"] == rep}
        d = group.get("direct")
        for name, r in group.items():
            if name == "direct" or d is None:
                continue

            def diff(k, r=r, d=d):
                return None if r.get(k) is None or d.get(k) is None else round(r[k] - d[k], 2)

            peer = group.get("vllm-router-1c" if name.endswith("1w") else "vllm-router-2c")
            ratio = None
            key = "cpu_exact_us_per_token"  # the scheduler's exact figure (the tick-sampled sum is noisier)
            if name.startswith("kubetier") and peer and peer.get(key) and r.get(key):
                ratio = round(r[key] / peer[key], 3)
            rows.append(
                {
                    "concurrency": c,
                    "repeat": rep,
                    "variant": name,
                    "cpu_user_us_per_token": r.get("cpu_user_us_per_token"),
                    "cpu_sys_us_per_token": r.get("cpu_sys_us_per_token"),
                    "cpu_exact_us_per_token": r.get("cpu_exact_us_per_token"),
                    "cpu_exact_us_per_request": r.get("cpu_exact_us_per_request"),
                    "cpu_ratio_vs_vllm_router": ratio,
                    "syscalls_per_token": r.get("syscalls_per_token"),
                    "added_ttft_ms_p50": diff("ttft_ms_p50"),
                    "added_ttft_ms_p99": diff("ttft_ms_p99"),
                    "added_tpot_ms_p50": diff("tpot_ms_p50"),
                    "added_tpot_ms_p99": diff("tpot_ms_p99"),
                    "attainment": r["attainment"],
                    "attainment_direct": d["attainment"],
                    "errors": r["errors"],
                    "rejected_429": r["rejected_429"],
                    "router_cpu_percent": r.get("router_cpu_percent"),
                    "load_average_1m": r["load_average_1m"],
                }
            )
    return rows


def _print_row(r: dict) -> None:
    att = "/".join(str(v) for v in r["attainment"].values())
    cpu = ""
    if "cpu_us_per_token" in r:
        cpu = (
            f" cpu/token {r['cpu_exact_us_per_token']} us ({r['cpu_user_us_per_token']}u+{r['cpu_sys_us_per_token']}s) "
            f"cpu/request {r['cpu_exact_us_per_request']} us "
            f"syscalls/token {r['syscalls_per_token']} router {r['router_cpu_percent']}%"
        )
    print(
        f"  c={r['concurrency']:<5} rep={r['repeat']} {r['variant']:>15} n={r['requests']:<5} err={r['errors']:<3} "
        f"429={r['rejected_429']:<4} "
        f"ttft p50/p99 {r['ttft_ms_p50']}/{r['ttft_ms_p99']} tpot p50/p99 {r['tpot_ms_p50']}/{r['tpot_ms_p99']} ms "
        f"attainment {att}{cpu} load {r['load_average_1m']}",
        flush=True,
    )
    view = r.get("router_view") or {}
    if view.get("ttft_split"):
        print(f"      ttft split (ms): {view['ttft_split']}", flush=True)
    if "latency_scale" in view:
        sc = view["latency_scale"]
        print(
            f"      router CPU while arrivals last {view.get('router_cpu_percent_arrivals')}% "
            f"runnable but waiting for its core {view.get('router_runqueue_percent_arrivals')}% "
            f"(max over 0.5 s {view.get('router_cpu_percent_max_0_5s')}%)",
            flush=True,
        )
        print(
            f"      policy: scale {sc['start']}->{sc['end']} (max {sc['max']}) decisions {view['decisions']} "
            f"queue {view['queue']} running router-engine {view['running_router_minus_engine']}",
            flush=True,
        )


def print_table(rows: list[dict]) -> None:
    print(
        f"{'streams':>7} {'rep':>3} {'variant':>15} {'us/tok':>7} {'(u+s)':>12} {'vs vllm':>7} {'sc/tok':>7} "
        f"{'+TTFT p50/p99':>15} {'+TPOT p50/p99':>15} {'attain (direct)':>28} {'err':>4} {'load':>5}"
    )
    for o in rows:
        cpu = f"{o['cpu_user_us_per_token']}+{o['cpu_sys_us_per_token']}"
        att = "/".join(str(v) for v in o["attainment"].values())
        att_d = "/".join(str(v) for v in o["attainment_direct"].values())
        print(
            f"{o['concurrency']:>7} {o['repeat']:>3} {o['variant']:>15} {o['cpu_exact_us_per_token']!s:>7} {cpu:>12} "
            f"{o['cpu_ratio_vs_vllm_router']!s:>7} "
            f"{o['syscalls_per_token']!s:>7} {o['added_ttft_ms_p50']!s:>7}/{o['added_ttft_ms_p99']!s:<7} "
            f"{o['added_tpot_ms_p50']!s:>7}/{o['added_tpot_ms_p99']!s:<7} {att + ' (' + att_d + ')':>28} "
            f"{o['errors']:>4} {o['load_average_1m']:>5}"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
