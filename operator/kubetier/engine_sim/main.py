"""`kubetier engine-sim`: run the engine simulator, or `kubetier engine-sim bench ...`."""

from __future__ import annotations

import argparse
import logging
import sys

from kubetier.argtypes import fraction, non_negative_float, positive_float, positive_int
from kubetier.lean_http.server import serve_until_signalled, tcp_port
from kubetier.policy.latency import DEFAULT_PROFILE, LatencyModel, ProfileError, load_profile


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetier engine-sim",
        description="A GPU-free vLLM stand-in: OpenAI-compatible HTTP, continuous batching timed by a "
        "latency profile, vLLM metric names.",
        epilog="`kubetier engine-sim bench --help`: the fidelity benchmark (measured vs. modelled TTFT/TPOT); "
        "`kubetier engine-sim capacity --help`: concurrent streams one simulator core holds.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=tcp_port, default=8000, help="port (default: %(default)s; 0 = any free port)")
    parser.add_argument(
        "--profile", default=DEFAULT_PROFILE, help="built-in latency profile name or YAML path (default: %(default)s)"
    )
    parser.add_argument("--model", default="", help="served model name (default: the profile's model)")
    parser.add_argument(
        "--model-load-seconds",
        type=non_negative_float,
        default=0.0,
        help="simulated model load: /health answers 503 until it ends (default: 0)",
    )
    parser.add_argument(
        "--time-scale",
        type=positive_float,
        default=1.0,
        help="speed-up: every duration is divided by this (default: 1 = real time)",
    )
    parser.add_argument(
        "--max-num-seqs",
        type=positive_int,
        default=None,
        help="running sequences at most (default: the profile's maxNumSeqs)",
    )
    parser.add_argument(
        "--max-model-len",
        type=positive_int,
        default=None,
        help="prompt + output tokens at most (default: min(131072, KV capacity))",
    )
    parser.add_argument(
        "--mean-output-tokens",
        type=positive_float,
        default=256.0,
        help="mean output length of requests without max_tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--request-overhead-ms",
        type=non_negative_float,
        default=None,
        help="mean serving time before a request reaches the scheduler (HTTP, tokenization); "
        "default: the profile's requestOverheadMs; 0 times the engine iterations alone",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (output lengths, faults)")
    parser.add_argument(
        "--enable-sleep-mode",
        action="store_true",
        help="serve vLLM's sleep-mode endpoints: POST /sleep?level=1|2, POST /wake_up, GET /is_sleeping",
    )
    parser.add_argument(
        "--wake-seconds",
        type=non_negative_float,
        default=1.0,
        help="time a level-1 /wake_up takes (vLLM: 0.26-0.82 s small models, 3-6 s large; default: %(default)s); "
        "a level-2 wake takes --model-load-seconds",
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument(
        "--slowdown", type=positive_float, default=1.0, help="multiply every iteration's duration by F (default: 1)"
    )
    faults.add_argument(
        "--fail-fraction",
        type=fraction,
        default=0.0,
        help="answer this fraction of generation requests with 500 (default: 0)",
    )
    faults.add_argument(
        "--abort-after-tokens",
        type=positive_int,
        default=None,
        help="cut the connection after N tokens (all requests, or --abort-fraction of them)",
    )
    faults.add_argument(
        "--abort-fraction",
        type=fraction,
        default=None,
        help="cut this fraction of requests mid-stream (at N tokens, or at a random token)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    return parser


async def _serve(args: argparse.Namespace, model: LatencyModel) -> int:
    from kubetier.engine_sim.app import EngineSimulator, SimConfig

    if args.max_num_seqs is not None and args.max_num_seqs > model.max_num_batched_tokens:
        print(
            f"kubetier engine-sim: --max-num-seqs {args.max_num_seqs} exceeds the profile's "
            f"maxNumBatchedTokens ({model.max_num_batched_tokens})",
            file=sys.stderr,
        )
        return 2
    config = SimConfig(
        model_name=args.model,
        model_load_seconds=args.model_load_seconds,
        time_scale=args.time_scale,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        seed=args.seed,
        mean_output_tokens=args.mean_output_tokens,
        slowdown=args.slowdown,
        request_overhead_ms=args.request_overhead_ms,
        fail_fraction=args.fail_fraction,
        abort_after_tokens=args.abort_after_tokens,
        abort_fraction=args.abort_fraction,
        enable_sleep_mode=args.enable_sleep_mode,
        wake_seconds=args.wake_seconds,
    )
    sim = EngineSimulator(model, config)
    server = await sim.serve(args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    logging.getLogger("kubetier.engine_sim").info(
        "engine-sim serving %s (profile %s) on http://%s:%d, time scale %g, model load %gs",
        sim.served_model,
        model.name,
        args.host,
        port,
        args.time_scale,
        args.model_load_seconds,
    )
    await serve_until_signalled(server)
    await sim.stop()
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "bench":
        from kubetier.engine_sim import fidelity

        return int(fidelity.main(argv[1:]) or 0)
    if argv and argv[0] == "capacity":
        from kubetier.engine_sim import capacity

        return int(capacity.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model = load_profile(args.profile)
    except ProfileError as exc:
        print(f"kubetier engine-sim: {exc}", file=sys.stderr)
        return 2
    raise_fd_limit()
    import uvloop

    return uvloop.run(_serve(args, model))


def raise_fd_limit() -> None:
    """Thousands of streams need thousands of sockets: lift the soft limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
