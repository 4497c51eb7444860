"""``kubetier router``: the SLO-tier router, and ``kubetier router bench``.

Static mode: ``kubetier router --port 8080 --config router.yaml`` (format below).
Cluster mode: ``kubetier router --port 8080`` learns models, tiers, API keys and servers
from the ``<service>-routing`` ConfigMaps the operator writes and the pods labelled
``kubetier.io/*`` (``--local-endpoints``: use a pod's ``kubetier.io/local-endpoint``
annotation instead of its IP, for KWOK clusters whose pods run no containers).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys

from kubetier.argtypes import non_negative_float
from kubetier.lean_http.server import serve_until_signalled, tcp_port
from kubetier.router import config as config_mod

log = logging.getLogger("kubetier.router")


TIER_SELECTION = """\
How a request gets its tier:
  1. The API key (Authorization: Bearer <key>) decides which tiers it may use (apiKeys
     in --config, or the ModelService's spec.access in cluster mode). Models without keys
     are open: every tier, no key needed.
  2. The header X-Kubetier-Tier: <name> asks for one of them: an unknown tier is 400, a
     tier the key may not use is 403 (the message lists the allowed ones).
  3. Without the header: the loosest tier the key may use (largest TPOT target, then
     lowest priority).
  The answer names the tier in the X-Kubetier-Tier response header (streamed and whole).
  Within the tier, requests go to the tier's own servers, may spill onto a tighter tier's
  servers when those keep their own targets, wait when no server can meet the tier's
  time-to-first-token target yet, and are refused when they can no longer meet it:
  429 (load shedding) for tiers with onLate: reject, or after --queue-timeout for tiers
  with onLate: queue; 503 + Retry-After when no server for the tier is ready at all.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubetier router",
        description="The SLO-tier router: OpenAI-compatible front, PolyServe routing over engine servers.",
        epilog=TIER_SELECTION
        + "\n--config FILE format:\n"
        + (config_mod.__doc__ or "").split("FILE (YAML)::", 1)[-1]
        + "\n`kubetier router bench --help`: the router benchmark.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=tcp_port, default=8080, help="port (default: %(default)s)")
    p.add_argument("--config", help="static configuration file (YAML); without it: cluster discovery")
    p.add_argument("--namespace", default=None, help="cluster mode: watch one namespace (default: all)")
    p.add_argument(
        "--local-endpoints",
        action="store_true",
        help="cluster mode: send a pod's traffic to its kubetier.io/local-endpoint annotation",
    )
    p.add_argument("--discovery-interval", type=float, default=2.0, help="cluster mode: seconds between syncs")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port with SO_REUSEPORT (default: 1)")
    p.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between engine /metrics scrapes")
    p.add_argument(
        "--fresh-read-interval",
        type=non_negative_float,
        default=None,
        help="router replicas: once an engine's /metrics shows streams this router did not send, re-read "
        "an engine whose view is older than this many seconds before routing onto it, while requests wait "
        "for it, and before refusing a request (0: never; default: 0.1)",
    )
    p.add_argument("--max-queue", type=int, default=10_000, help="waiting requests per model before 429")
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        help="seconds without a byte (from the last one) before a stream is resumed elsewhere",
    )
    p.add_argument(
        "--timeout-slack",
        type=float,
        default=4.0,
        help="timeouts are FLOOR + SLACK x (tier TTFT + max_tokens x tier TPOT) for whole answers, "
        "FLOOR + SLACK x TTFT for a stream's first token (default: %(default)s)",
    )
    p.add_argument("--timeout-floor", type=float, default=10.0, help="seconds added to every derived timeout")
    p.add_argument(
        "--queue-timeout",
        type=float,
        default=60.0,
        help="longest wait for a server in a tier with onLate: queue, then 429 (default: %(default)s)",
    )
    g = p.add_argument_group("hostile clients (limits per router process)")
    g.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="request body (413 above)")
    g.add_argument("--max-header-bytes", type=int, default=32 * 1024, help="request line + headers (431 above)")
    g.add_argument("--max-headers", type=int, default=100, help="request headers (431 above)")
    g.add_argument("--max-pipelined", type=int, default=4, help="parsed requests queued per connection")
    g.add_argument("--max-connections", type=int, default=10_000, help="open client connections (503 above)")
    g.add_argument("--max-connections-per-client", type=int, default=256, help="open connections per client address")
    g.add_argument("--idle-timeout", type=float, default=75.0, help="seconds an idle keep-alive connection stays")
    g.add_argument("--request-timeout", type=float, default=30.0, help="seconds to receive one whole request (408)")
    g.add_argument("--bad-key-limit", type=int, default=10, help="invalid keys per address per minute before a block")
    g.add_argument("--bad-key-block", type=float, default=60.0, help="seconds an address stays blocked")
    g.add_argument("--key-rpm", type=int, default=0, help="requests per minute per API key and tier (0: no limit)")
    g.add_argument(
        "--key-tpm",
        type=int,
        default=0,
        help="tokens per minute per API key and tier: prompt tokens counted by the router + max_tokens (0: no limit)",
    )
    g.add_argument(
        "--key-concurrency", type=int, default=0, help="requests in flight per API key and tier (0: no limit)"
    )
    g.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        help="allow browser requests from this origin (repeat; '*' = any). Default: CORS off",
    )
    a = p.add_argument_group("admin endpoints (/metrics, /kubetier/status)")
    a.add_argument("--admin-port", type=tcp_port, default=None, help="serve them on this port only (no key)")
    a.add_argument(
        "--admin-key-env",
        default="KUBETIER_ROUTER_ADMIN_KEY",
        help="environment variable holding a key the client port asks for on them (default: %(default)s; unset: open)",
    )
    p.add_argument("--no-access-log", action="store_true", help="no per-request JSON access log lines")
    p.add_argument("--log-level", default="INFO")
    return p


async def _serve(args: argparse.Namespace) -> int:
    from kubetier.lean_http import Limits, start_server
    from kubetier.lean_http.errors import openai_error_body
    from kubetier.router.access import BadKeyThrottle, KeyLimits
    from kubetier.router.app import Router
    from kubetier.router.config import RouterConfig

    if args.config:
        cfg = config_mod.load_config(args.config)
    else:
        cfg = RouterConfig(models={})
    router = Router(
        cfg,
        max_queue=args.max_queue,
        scrape_interval_s=args.scrape_interval,
        fresh_read_s=args.fresh_read_interval,
        stall_timeout_s=args.stall_timeout,
        timeout_slack=args.timeout_slack,
        timeout_floor_s=args.timeout_floor,
        queue_timeout_s=args.queue_timeout,
        key_limits=KeyLimits(args.key_rpm, args.key_tpm, args.key_concurrency),
        bad_key_throttle=BadKeyThrottle(max_failures=args.bad_key_limit, block_s=args.bad_key_block),
        admin_key=os.environ.get(args.admin_key_env) or None,
        admin_port_separate=args.admin_port is not None,
        cors_origins=tuple(args.cors_origin),
        access_log=not args.no_access_log,
    )
    router.start()
    discovery_task = None
    if not args.config:
        from kubetier.router.discovery import run_discovery

        discovery_task = asyncio.ensure_future(
            run_discovery(
                router,
                namespace=args.namespace,
                local_endpoints=args.local_endpoints,
                interval_s=args.discovery_interval,
            )
        )
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers,
        max_pipelined=args.max_pipelined,
        max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client,
        request_timeout_s=args.request_timeout,
        keepalive_timeout_s=args.idle_timeout,
        write_stall_timeout_s=60.0,
    )
    reuse = args.workers > 1 or args.reuse_port
    server = await start_server(
        router.handle,
        args.host,
        args.port,
        reuse_port=reuse,
        limits=limits,
        head_check=router.head_check,
        error_body_fn=openai_error_body,
    )
    admin = None
    if args.admin_port is not None:
        admin = await start_server(router.handle_admin, args.host, args.admin_port, reuse_port=reuse)
        log.info("admin endpoints on %s:%d", args.host, args.admin_port)
    elif router._admin_digest is None:
        log.warning(
            "/metrics and /kubetier/status are open on the client port: set --admin-port or $%s", args.admin_key_env
        )
    # Everything allocated so far lives as long as the process: keep it out of the
    # collector's way, and collect the young generation less often (per-stream objects
    # are short-lived and acyclic; a young collection per 700 allocations showed up in
    # profiles of the relay).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    log.info("router listening on %s:%d (%d models)", args.host, args.port, len(router.fleets))
    await serve_until_signalled(server)
    if admin is not None:
        admin.close()
    if discovery_task:
        discovery_task.cancel()
    await router.stop()
    return 0


def _run_workers(argv: list[str], workers: int) -> int:
    """K worker processes on one port (SO_REUSEPORT); the kernel spreads connections.
    Their metrics meet in a shared directory (prometheus_client multiprocess mode)."""
    import shutil
    import tempfile

    own_dir = None
    env = dict(os.environ)
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="kubetier-router-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kubetier.cli", "router", *argv, "--workers", "1", "--reuse-port"], env=env
        )
        for _ in range(workers)
    ]

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = 0
    try:
        for p in procs:
            rc = p.wait() or rc
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
    return rc


def main(argv: list[str]) -> int:
    # `kubetier router bench` is dispatched by kubetier.cli: the router never imports it.
    parser = build_parser()
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.config:
        try:
            config_mod.load_config(args.config)  # fail fast, before forking workers
        except config_mod.ConfigError as exc:
            print(f"kubetier router: {exc}", file=sys.stderr)
            return 2
    if args.workers > 1:
        rest = []
        skip = False
        for _i, a in enumerate(argv):
            if skip:
                skip = False
                continue
            if a == "--workers":
                skip = True
                continue
            if a.startswith("--workers="):
                continue
            rest.append(a)
        return _run_workers(rest, args.workers)
    import uvloop

    return uvloop.run(_serve(args))
