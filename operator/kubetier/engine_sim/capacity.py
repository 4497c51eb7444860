"""`kubetier engine-sim capacity`: how many concurrent streams one simulator core holds.

The simulator runs as its own process pinned to one CPU, the load client (the lean
SSE client in ``loadgen``) pinned to another. For each concurrency level it opens that
many connections, sends one streamed completion on each (spread over ``--ramp-s``),
and compares client-side TTFT/TPOT with the latency model's prediction for the same
arrivals (the scheduler replayed on a virtual clock). It also reads the simulator's
CPU time from /proc. Prints a table and writes JSON; asserts nothing (a benchmark).

A level counts as sustained when every stream completes, median TTFT and TPOT are
within 10% of the model's, and the p99 stream's TPOT within 25%. The milliseconds the
simulator adds to TTFT (median, p99) are reported beside.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import httpx

from kubetier.engine_sim.loadgen import run_concurrent
from kubetier.engine_sim.virtual import predict
from kubetier.policy.latency import DEFAULT_PROFILE, load_profile
from kubetier.stats import percentile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _level(port: int, pid: int, n: int, args: argparse.Namespace, model) -> dict:
    bodies = [
        {
            "model": args.model,
            "prompt": "x",
            "prompt_tokens": args.prompt_tokens,
            "max_tokens": args.output_tokens,
            "stream": True,
        }
        for _ in range(n)
    ]
    cpu0, wall0, client0 = _cpu_seconds(pid), time.perf_counter(), time.process_time()
    results = await run_concurrent("127.0.0.1", port, "/v1/completions", bodies, stagger_s=args.ramp_s / n, timeout=120)
    wall = time.perf_counter() - wall0
    cpu = _cpu_seconds(pid) - cpu0
    client_cpu = time.process_time() - client0
    ok = [r for r in results if r.error is None and r.status == 200 and r.tokens == args.output_tokens]
    t0 = min(r.sent for r in results)
    predicted = predict(
        model,
        [(r.sent - t0, args.prompt_tokens, args.output_tokens) for r in results],
        max_num_seqs=args.max_num_seqs,
        time_scale=args.time_scale,
    )
    pairs = [(r, p) for r, p in zip(results, predicted) if r in ok]
    ttft_added = [r.ttft - p.ttft_s for r, p in pairs]
    tpot_ratio = [r.tpot / p.tpot_s for r, p in pairs if p.tpot_s > 0]
    tokens = sum(r.tokens for r in results)
    row = {
        "streams": n,
        "completed": len(ok),
        "server_cpu_fraction": cpu / wall,
        "client_cpu_fraction": client_cpu / wall,
        "tokens_per_s": tokens / wall,
        "server_cpu_us_per_token": cpu / tokens * 1e6 if tokens else None,
        "ttft_model_p50_ms": statistics.median(p.ttft_s for _, p in pairs) * 1e3 if pairs else None,
        "ttft_added_p50_ms": statistics.median(ttft_added) * 1e3 if pairs else None,
        "ttft_added_p99_ms": percentile(ttft_added, 0.99) * 1e3 if pairs else None,
        "tpot_model_p50_ms": statistics.median(p.tpot_s for _, p in pairs) * 1e3 if pairs else None,
        "tpot_measured_p50_ms": statistics.median(r.tpot for r, _ in pairs) * 1e3 if pairs else None,
        "tpot_ratio_p50": statistics.median(tpot_ratio) if tpot_ratio else None,
        "tpot_ratio_p99": percentile(tpot_ratio, 0.99) if tpot_ratio else None,
        "wall_s": wall,
    }
    ttft_ratio = [r.ttft / p.ttft_s for r, p in pairs]
    row["ttft_ratio_p50"] = statistics.median(ttft_ratio) if pairs else None
    row["sustained"] = bool(
        len(ok) == n
        and pairs
        and abs(row["tpot_ratio_p50"] - 1) <= 0.10
        and row["tpot_ratio_p99"] <= 1.25
        and abs(row["ttft_ratio_p50"] - 1) <= 0.10
    )
    return row


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubetier engine-sim capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="250,500,1000,1500", help="concurrency levels (default: %(default)s)")
    p.add_argument("--profile", default=DEFAULT_PROFILE)
    p.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--max-num-seqs", type=int, default=2048, help="large, so no stream waits for a slot")
    p.add_argument("--ramp-s", type=float, default=0.5, help="spread the sends of one level over this")
    p.add_argument("--server-cpu", type=int, default=0, help="CPU the simulator is pinned to")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU this client is pinned to")
    p.add_argument("--json", default="engine-sim-capacity.json", help="where to write the results")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from kubetier.engine_sim.main import raise_fd_limit

    raise_fd_limit()
    levels = [int(x) for x in args.streams.split(",") if x]
    model = load_profile(args.profile)
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "kubetier.cli",
        "engine-sim",
        "--port",
        str(port),
        "--profile",
        args.profile,
        "--model",
        args.model,
        "--time-scale",
        str(args.time_scale),
        "--max-num-seqs",
        str(args.max_num_seqs),
        "--log-level",
        "WARNING",
    ]
    server_cpu = args.server_cpu

    def pin() -> None:
        os.sched_setaffinity(0, {server_cpu})

    proc = subprocess.Popen(cmd, preexec_fn=pin)
    try:
        os.sched_setaffinity(0, {args.client_cpu})
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                print("engine-sim exited early", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                print("engine-sim did not become healthy", file=sys.stderr)
                return 1
            time.sleep(0.1)

        import uvloop

        rows = []
        header = (
            f"{'streams':>7} {'done':>5} {'cpu':>5} {'client':>6} {'tok/s':>7} {'us/tok':>6} {'ttft model':>10} "
            f"{'+p50':>6} {'+p99':>6} {'tpot model':>10} {'tpot meas':>9} {'ratio p99':>9}  sustained"
        )
        print(header)
        for n in levels:
            row = uvloop.run(_level(port, proc.pid, n, args, model))
            rows.append(row)
            print(
                f"{n:>7} {row['completed']:>5} {row['server_cpu_fraction']:>5.2f} {row['client_cpu_fraction']:>6.2f} {row['tokens_per_s']:>7.0f} "
                f"{row['server_cpu_us_per_token'] or 0:>6.1f} {row['ttft_model_p50_ms'] or 0:>8.1f}ms "
                f"{row['ttft_added_p50_ms'] or 0:>5.1f} {row['ttft_added_p99_ms'] or 0:>6.1f} "
                f"{row['tpot_model_p50_ms'] or 0:>8.2f}ms {row['tpot_measured_p50_ms'] or 0:>7.2f}ms "
                f"{row['tpot_ratio_p99'] or 0:>9.3f}  {row['sustained']}",
                flush=True,
            )
        best = max((r["streams"] for r in rows if r["sustained"]), default=0)
        print(f"max sustained concurrent streams on one core: {best}")
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "levels": rows, "max_sustained_streams": best}, f, indent=2)
        print(f"wrote {args.json}")
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
