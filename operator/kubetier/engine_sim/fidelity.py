"""`kubetier engine-sim bench`: does the engine simulator serve the latency its profile predicts?

The benchmark starts the simulator on loopback (or uses ``--server``), drives it with
closed-loop streaming clients at several concurrencies (fixed prompt and output
lengths), measures TTFT and TPOT from the client side over real HTTP, and compares
them with what the latency model predicts for that steady state. It prints the error
per point and the median absolute error, and runs a 1,000-stream sustain check.

The simulator runs without its request overhead here (``--request-overhead-ms 0``;
with it, requests land at random phases and the prediction is rougher), so the
benchmark measures the iteration timing; the overhead itself is an additive term
checked by a single-request test.

The prediction (:func:`kubetier.policy.closed_loop.predict_closed_loop`, whose
docstring derives it) is worked out from the latency model and vLLM's iteration
semantics alone, not by replaying the simulator's scheduler, so a mismatch in either
timing or scheduling shows up as error. Saturated points are rough there, so the
benchmark keeps its points unsaturated (the sustain check raises ``--max-num-seqs``).

Times are model seconds; with ``--time-scale F`` the simulator runs ``F`` times faster
and the measured times are multiplied by ``F`` before comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field

from kubetier.policy.closed_loop import predict_closed_loop
from kubetier.policy.latency import DEFAULT_PROFILE, LatencyModel, ProfileError, load_profile

DEFAULT_CONCURRENCIES = (1, 8, 32, 64, 128, 256)


# The prediction lives in kubetier.policy.closed_loop (shared with the profile calibration).


# --------------------------------------------------------------------------- client


_EVENT = b"data: {"
_DONE = b"data: [DONE]"


@dataclass(slots=True)
class RequestRecord:
    sent: float
    first: float = 0.0
    last: float = 0.0
    done: float = 0.0
    tokens: int = 0
    status: int = 0
    ok: bool = False


class _StreamConnection(asyncio.Protocol):
    """One keep-alive connection that streams one completion at a time.

    Per token it does one perf_counter() and one bytes.count(): the client must stay
    cheaper than the server it measures, on the same two cores."""

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._record: RequestRecord | None = None
        self._waiter: asyncio.Future | None = None
        self._tail = b""
        self.closed = False
        self.on_tokens = None  # optional callback(new_events), the benchmark's iteration clock

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # malformed response: fail the request, drop the connection
            self._finish(exc)
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._finish(exc or ConnectionError("connection closed"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        if self._record is not None:
            self._record.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        rec = self._record
        if rec is None:
            return
        buf = self._tail + body
        n = buf.count(_EVENT)
        if n:
            now = time.perf_counter()
            if rec.tokens == 0:
                rec.first = now
            rec.tokens += n
            rec.last = now
            if self.on_tokens is not None:
                self.on_tokens(n)
        self._tail = body[-(len(_EVENT) - 1) :]

    def on_message_complete(self) -> None:
        rec = self._record
        if rec is not None:
            rec.done = time.perf_counter()
            rec.ok = rec.status == 200 and rec.tokens > 0
        self._finish(None)

    def _finish(self, exc) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            if exc is None:
                w.set_result(None)
            else:
                w.set_exception(exc)

    async def request(self, raw: bytes, rec: RequestRecord) -> None:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        self._record = rec
        self._tail = b""
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        await self._waiter


def _request_bytes(host: str, port: int, prompt_tokens: int, output_tokens: int) -> bytes:
    # Token ids give the server an exact prompt length; ignore_eos as vLLM's benchmark does.
    body = json.dumps(
        {
            "prompt": [1000 + (i % 20000) for i in range(prompt_tokens)],
            "max_tokens": output_tokens,
            "min_tokens": output_tokens,
            "ignore_eos": True,
            "stream": True,
            "temperature": 0.0,
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


@dataclass
class PointResult:
    concurrency: int
    requests: int
    errors: int
    measured_ttft_ms: float
    measured_tpot_ms: float
    measured_ttft_p50_ms: float
    measured_ttft_p90_ms: float
    measured_tpot_p50_ms: float
    measured_tpot_p90_ms: float
    predicted: dict
    ttft_error_pct: float
    tpot_error_pct: float
    window_s: float
    output_tokens_per_s: float
    server_cpu_cores: float | None
    client_cpu_cores: float
    concurrent_streams_peak: int = 0
    # The simulator's own vLLM histograms over the same window (arrival at the engine to
    # token, no HTTP): client minus server is the HTTP path and both processes' CPU.
    server_ttft_ms: float = math.nan
    server_tpot_ms: float = math.nan
    server_ttft_error_pct: float = math.nan
    server_tpot_error_pct: float = math.nan
    notes: list[str] = field(default_factory=list)


def _proc_cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


_SERVER_HISTOGRAMS = {"ttft": "vllm:time_to_first_token_seconds", "tpot": "vllm:time_per_output_token_seconds"}


async def _scrape_server(host: str, port: int) -> dict[str, tuple[float, float]]:
    """(sum, count) of the simulator's own TTFT/TPOT histograms, from /metrics."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        text = (await asyncio.wait_for(reader.read(), timeout=10)).decode(errors="replace")
        writer.close()
    except (TimeoutError, OSError):
        return {}
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for key, name in _SERVER_HISTOGRAMS.items():
            for suffix, idx in (("_sum", 0), ("_count", 1)):
                if line.startswith(name + suffix):
                    try:
                        value = float(line.rsplit(" ", 1)[1])
                    except ValueError:
                        continue
                    out.setdefault(key, [0.0, 0.0])[idx] += value
    return {k: (v[0], v[1]) for k, v in out.items()}


def _server_mean(before: dict, after: dict, key: str) -> float:
    if key not in before or key not in after:
        return math.nan
    d_sum = after[key][0] - before[key][0]
    d_count = after[key][1] - before[key][1]
    return d_sum / d_count if d_count > 0 else math.nan


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


async def run_point(
    host: str,
    port: int,
    model: LatencyModel,
    concurrency: int,
    prompt_tokens: int,
    output_tokens: int,
    *,
    time_scale: float = 1.0,
    max_num_seqs: int | None = None,
    warmup_cycles: float = 1.0,
    measure_cycles: float = 2.0,
    min_requests: int = 16,
    server_pid: int | None = None,
) -> PointResult:
    """Drive ``concurrency`` closed-loop streams and compare with the prediction.

    The streams join one by one on the token events of stream 0, which tick once per
    engine iteration: stream ``i`` sends its first request right after stream 0's
    ``i * O / C``-th token, so the streams' phases are spread evenly over the cycle, the
    steady state the prediction describes. (Starting them at evenly spaced wall-clock
    times instead lets phases bunch up while the early, short iterations run, and a
    bunch of streams stays together for good: they finish together and restart
    together.)"""
    pred = predict_closed_loop(model, concurrency, prompt_tokens, output_tokens, max_num_seqs)
    cycle = pred.cycle_s / time_scale  # wall seconds
    measure = max(measure_cycles, math.ceil(min_requests / concurrency)) * cycle
    loop = asyncio.get_running_loop()
    raw = _request_bytes(host, port, prompt_tokens, output_tokens)
    records: list[RequestRecord] = []
    conns: list[_StreamConnection] = []
    tasks: list[asyncio.Task] = []
    state = {"errors": 0, "active": 0, "peak": 0, "stopping": False, "events": 0}
    due: dict[int, list[int]] = {}
    for i in range(1, concurrency):
        due.setdefault(i * output_tokens // concurrency, []).append(i)
    ramped = loop.create_future()
    if not due:
        ramped.set_result(None)

    def on_clock_tokens(n: int) -> None:
        # Stream 0's token events: start the streams due at each of them.
        for _ in range(n):
            for i in due.pop(state["events"], ()):
                tasks.append(loop.create_task(stream(i)))
            state["events"] += 1
        if not due and not ramped.done():
            ramped.set_result(None)

    async def stream(i: int) -> None:
        try:
            _, conn = await loop.create_connection(_StreamConnection, host, port)
        except OSError:
            state["errors"] += 1
            return
        if i == 0:
            conn.on_tokens = on_clock_tokens
        conns.append(conn)
        while not state["stopping"]:
            rec = RequestRecord(sent=time.perf_counter())
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
            try:
                await conn.request(raw, rec)
            except (ConnectionError, OSError):
                if not state["stopping"]:
                    state["errors"] += 1
                return
            finally:
                state["active"] -= 1
            if not rec.ok:
                state["errors"] += 1
                if rec.status >= 500 or rec.status == 0:
                    await asyncio.sleep(cycle / 10)
                continue
            records.append(rec)

    tasks.append(loop.create_task(stream(0)))
    try:
        # Stream 0 ticks O times per cycle; allow for slow ramps but never hang.
        await asyncio.wait_for(asyncio.shield(ramped), timeout=10 * cycle + 10)
    except TimeoutError:
        pass
    for i in sorted(j for js in due.values() for j in js):  # clock stalled: start the rest now
        tasks.append(loop.create_task(stream(i)))
    due.clear()
    t_warm = time.perf_counter() + warmup_cycles * cycle
    t_stop = t_warm + measure
    await asyncio.sleep(max(0.0, t_warm - time.perf_counter()))
    cpu0_server, cpu0_client, wall0 = _proc_cpu_s(server_pid), time.process_time(), time.perf_counter()
    server0 = await _scrape_server(host, port)
    while time.perf_counter() < t_stop:  # uvloop timers may fire up to 1 ms early
        await asyncio.sleep(max(0.0005, t_stop - time.perf_counter()))
    cpu1_server, cpu1_client, wall1 = _proc_cpu_s(server_pid), time.process_time(), time.perf_counter()
    server1 = await _scrape_server(host, port)
    # Close every connection: requests still running do not count, and the server
    # aborts them, so the next point starts from an idle engine.
    state["stopping"] = True
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.gather(*tasks, return_exceptions=True)

    window = [r for r in records if r.sent >= t_warm and r.done <= t_stop and r.tokens >= 2]
    ttft = [(r.first - r.sent) * time_scale for r in window]
    tpot = [(r.last - r.first) / (r.tokens - 1) * time_scale for r in window]
    notes = []
    bad_len = sum(1 for r in window if r.tokens != output_tokens)
    if bad_len:
        notes.append(f"{bad_len} responses had a token count other than {output_tokens}")
    m_ttft = statistics.fmean(ttft) if ttft else math.nan
    m_tpot = statistics.fmean(tpot) if tpot else math.nan
    span = wall1 - wall0
    server_cpu = None
    if cpu0_server is not None and cpu1_server is not None and span > 0:
        server_cpu = (cpu1_server - cpu0_server) / span
    client_cpu = (cpu1_client - cpu0_client) / span if span > 0 else math.nan
    tokens_in_window = sum(r.tokens for r in window)
    s_ttft = _server_mean(server0, server1, "ttft") * time_scale
    s_tpot = _server_mean(server0, server1, "tpot") * time_scale
    return PointResult(
        concurrency=concurrency,
        requests=len(window),
        errors=state["errors"],
        measured_ttft_ms=m_ttft * 1e3,
        measured_tpot_ms=m_tpot * 1e3,
        measured_ttft_p50_ms=_pct(ttft, 0.5) * 1e3,
        measured_ttft_p90_ms=_pct(ttft, 0.9) * 1e3,
        measured_tpot_p50_ms=_pct(tpot, 0.5) * 1e3,
        measured_tpot_p90_ms=_pct(tpot, 0.9) * 1e3,
        predicted={k: (round(v * 1e3, 3) if k.endswith("_s") else v) for k, v in asdict(pred).items()},
        ttft_error_pct=(m_ttft / pred.ttft_s - 1) * 100,
        tpot_error_pct=(m_tpot / pred.tpot_s - 1) * 100,
        window_s=measure,
        output_tokens_per_s=tokens_in_window / measure if measure else math.nan,
        server_cpu_cores=server_cpu,
        client_cpu_cores=client_cpu,
        concurrent_streams_peak=state["peak"],
        server_ttft_ms=s_ttft * 1e3,
        server_tpot_ms=s_tpot * 1e3,
        server_ttft_error_pct=(s_ttft / pred.ttft_s - 1) * 100,
        server_tpot_error_pct=(s_tpot / pred.tpot_s - 1) * 100,
        notes=notes,
    )


# --------------------------------------------------------------------------- the server


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SimulatorProcess:
    """`kubetier engine-sim` as a child process on loopback, stopped on exit."""

    def __init__(
        self,
        profile: str,
        *,
        time_scale: float,
        max_num_seqs: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 30.0,
        cpu: int | None = None,
    ) -> None:
        self.host = host
        self.port = _free_port(host)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        cmd = [
            sys.executable,
            "-m",
            "kubetier.cli",
            "engine-sim",
            "--host",
            host,
            "--port",
            str(self.port),
            "--profile",
            profile,
            "--time-scale",
            repr(time_scale),
            "--log-level",
            "WARNING",
            # The benchmark times the iterations: requests reach the scheduler at once
            # (the request overhead is a separate, additive term, checked on its own).
            "--request-overhead-ms",
            "0",
        ]
        if max_num_seqs is not None:
            cmd += ["--max-num-seqs", str(max_num_seqs)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})  # "on one core" made literal
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine-sim exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{host}:{self.port}/health", timeout=1.0) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"engine-sim not healthy after {startup_timeout_s:g}s: {self.log_tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- the benchmark


def median_abs_error_pct(points: list[PointResult]) -> dict[str, float]:
    ttft = [abs(p.ttft_error_pct) for p in points if math.isfinite(p.ttft_error_pct)]
    tpot = [abs(p.tpot_error_pct) for p in points if math.isfinite(p.tpot_error_pct)]
    both = ttft + tpot
    return {
        "ttft": statistics.median(ttft) if ttft else math.nan,
        "tpot": statistics.median(tpot) if tpot else math.nan,
        "all": statistics.median(both) if both else math.nan,
    }


async def run_sweep(
    host: str,
    port: int,
    model: LatencyModel,
    concurrencies,
    prompt_tokens: int,
    output_tokens: int,
    *,
    time_scale: float,
    max_num_seqs: int | None = None,
    server_pid: int | None = None,
    measure_cycles: float = 2.0,
    min_requests: int = 16,
    repeat: int = 1,
    echo=None,
) -> list[PointResult]:
    """One point per concurrency. With ``repeat > 1`` each point is measured that many
    times and the run with the median client-side TTFT error is kept (a neighbour
    stealing the CPU for a moment spoils one run, not the figure); the others' errors
    are listed in its notes.

    The server is expected to run without request overhead (``--request-overhead-ms 0``,
    as :class:`SimulatorProcess` starts it): the prediction leaves it out too."""
    model = dataclasses.replace(model, request_overhead_s=0.0)
    points = []
    for c in concurrencies:
        runs = []
        for _ in range(max(1, repeat)):
            runs.append(
                await run_point(
                    host,
                    port,
                    model,
                    c,
                    prompt_tokens,
                    output_tokens,
                    time_scale=time_scale,
                    max_num_seqs=max_num_seqs,
                    server_pid=server_pid,
                    measure_cycles=measure_cycles,
                    min_requests=min_requests,
                )
            )
        runs.sort(key=lambda r: abs(r.ttft_error_pct) if math.isfinite(r.ttft_error_pct) else math.inf)
        p = runs[(len(runs) - 1) // 2]
        if len(runs) > 1:
            p.notes.append(
                "runs (TTFT%, TPOT%): " + ", ".join(f"({r.ttft_error_pct:+.1f}, {r.tpot_error_pct:+.1f})" for r in runs)
            )
        points.append(p)
        if echo:
            echo(_row(p))
    return points


_HEADER = (
    f"{'streams':>7} {'reqs':>5} {'err':>4} | {'TTFT ms':>8} {'pred':>8} {'err%':>6} {'srv%':>6} | "
    f"{'TPOT ms':>8} {'pred':>8} {'err%':>6} {'srv%':>6} | {'tok/s':>6} {'simCPU':>6} {'regime':>11}"
)


def _row(p: PointResult) -> str:
    cpu = f"{p.server_cpu_cores:.2f}" if p.server_cpu_cores is not None else "-"
    return (
        f"{p.concurrency:>7} {p.requests:>5} {p.errors:>4} | {p.measured_ttft_ms:>8.1f} "
        f"{p.predicted['ttft_s']:>8.1f} {p.ttft_error_pct:>+6.1f} {p.server_ttft_error_pct:>+6.1f} | "
        f"{p.measured_tpot_ms:>8.2f} {p.predicted['tpot_s']:>8.2f} {p.tpot_error_pct:>+6.1f} "
        f"{p.server_tpot_error_pct:>+6.1f} | {p.output_tokens_per_s:>6.0f} {cpu:>6} {p.predicted['regime']:>11}"
    )


def _uvloop_run(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)


def _raise_fd_limit(wanted: int) -> None:
    """A thousand streams need a thousand sockets; many shells start with 1024."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="kubetier engine-sim bench",
        description="Fidelity benchmark: drive the engine simulator with closed-loop streaming clients "
        "and compare client-side TTFT/TPOT with the latency model's prediction.",
    )
    ap.add_argument("--profile", default=DEFAULT_PROFILE, help="latency profile (default: %(default)s)")
    ap.add_argument(
        "--concurrency",
        default=",".join(map(str, DEFAULT_CONCURRENCIES)),
        help="comma-separated stream counts (default: %(default)s)",
    )
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="run the simulator this many times faster; measured times are scaled back",
    )
    ap.add_argument(
        "--measure-cycles",
        type=float,
        default=2.0,
        help="measurement window per point, in predicted stream cycles (default: %(default)s)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each point this many times and keep the median run (default: %(default)s)",
    )
    ap.add_argument(
        "--sustain",
        type=int,
        default=1000,
        help="streams for the sustain check, all decoding at once (0 skips; default: %(default)s)",
    )
    ap.add_argument("--sustain-prompt-tokens", type=int, default=128)
    ap.add_argument("--sustain-output-tokens", type=int, default=256)
    ap.add_argument(
        "--server",
        default=None,
        help="HOST:PORT of a running simulator started with --request-overhead-ms 0 (sweep only; default: start one on loopback)",
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="pin the simulator to one CPU and this client to another (on a quiet machine "
        "this makes 'one core' literal; on a shared one it stops the OS moving either "
        "away from a busy neighbour, so it is off by default)",
    )
    ap.add_argument("--output", default=None, help="write the results as JSON to this file")
    args = ap.parse_args(argv)

    try:
        concurrencies = [int(x) for x in args.concurrency.split(",") if x.strip()]
        if not concurrencies or min(concurrencies) < 1:
            raise ValueError
    except ValueError:
        print(
            f"kubetier engine-sim bench: --concurrency: expected positive integers, got {args.concurrency!r}",
            file=sys.stderr,
        )
        return 2
    if args.time_scale <= 0 or args.prompt_tokens < 1 or args.output_tokens < 2 or args.repeat < 1:
        print(
            "kubetier engine-sim bench: --time-scale must be > 0, --prompt-tokens >= 1, --output-tokens >= 2, "
            "--repeat >= 1",
            file=sys.stderr,
        )
        return 2
    try:
        model = load_profile(args.profile)
    except ProfileError as exc:
        print(f"kubetier engine-sim bench: {exc}", file=sys.stderr)
        return 2

    _raise_fd_limit(args.sustain + max(concurrencies) + 64)
    sim_cpu = None
    if args.pin and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
        cpus = sorted(os.sched_getaffinity(0))
        sim_cpu = cpus[0]
        os.sched_setaffinity(0, {cpus[1]})
    result: dict = {
        "profile": model.name,
        "timeScale": args.time_scale,
        "promptTokens": args.prompt_tokens,
        "outputTokens": args.output_tokens,
        "cpuCount": os.cpu_count(),
        "simulatorCpu": sim_cpu,
    }
    print(
        f"fidelity: profile {model.name}, prompt {args.prompt_tokens} / output {args.output_tokens} tokens, "
        f"time scale {args.time_scale:g} (times below in model ms)"
        + (f"; simulator pinned to CPU {sim_cpu}, client to another" if sim_cpu is not None else "")
    )
    print(_HEADER)
    try:
        if args.server:
            host, _, port = args.server.rpartition(":")
            points = _uvloop_run(
                run_sweep(
                    host,
                    int(port),
                    model,
                    concurrencies,
                    args.prompt_tokens,
                    args.output_tokens,
                    time_scale=args.time_scale,
                    measure_cycles=args.measure_cycles,
                    repeat=args.repeat,
                    echo=print,
                )
            )
        else:
            with SimulatorProcess(args.profile, time_scale=args.time_scale, cpu=sim_cpu) as sim:
                points = _uvloop_run(
                    run_sweep(
                        sim.host,
                        sim.port,
                        model,
                        concurrencies,
                        args.prompt_tokens,
                        args.output_tokens,
                        time_scale=args.time_scale,
                        server_pid=sim.pid,
                        measure_cycles=args.measure_cycles,
                        repeat=args.repeat,
                        echo=print,
                    )
                )
    except RuntimeError as exc:
        print(f"kubetier engine-sim bench: {exc}", file=sys.stderr)
        return 1
    mae = median_abs_error_pct(points)
    print(
        f"median absolute error: TTFT {mae['ttft']:.1f}%, TPOT {mae['tpot']:.1f}%, all {mae['all']:.1f}% (target < 10%)"
    )
    result["points"] = [asdict(p) for p in points]
    result["medianAbsErrorPct"] = mae

    if args.sustain and not args.server:
        n = args.sustain
        print(
            f"sustain: {n} streams decoding at once (--max-num-seqs {n}), prompt "
            f"{args.sustain_prompt_tokens} / output {args.sustain_output_tokens}"
        )
        print(_HEADER)
        try:
            with SimulatorProcess(args.profile, time_scale=args.time_scale, max_num_seqs=n, cpu=sim_cpu) as sim:
                p = _uvloop_run(
                    run_point(
                        sim.host,
                        sim.port,
                        model,
                        n,
                        args.sustain_prompt_tokens,
                        args.sustain_output_tokens,
                        time_scale=args.time_scale,
                        max_num_seqs=n,
                        server_pid=sim.pid,
                        measure_cycles=args.measure_cycles,
                    )
                )
        except RuntimeError as exc:
            print(f"kubetier engine-sim bench: sustain: {exc}", file=sys.stderr)
            return 1
        print(_row(p))
        print(
            f"sustain: {p.concurrent_streams_peak} concurrent streams, {p.requests} requests measured, "
            f"{p.errors} errors, {p.output_tokens_per_s:.0f} tokens/s, simulator CPU "
            f"{p.server_cpu_cores if p.server_cpu_cores is not None else float('nan'):.2f} cores"
        )
        result["sustain"] = asdict(p)

    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=float)
        print(f"wrote {args.output}")
    return 0
