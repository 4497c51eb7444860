"""`kubetier agent`: the per-node power agent (POLCA's telemetry and actuator)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from kubetier.agent.backend import BackendError, PowerBackend
from kubetier.agent.loop import Agent, AgentConfig
from kubetier.api.node_power import NodePowerReport
from kubetier.argtypes import positive_float


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubetier agent",
        description="Per-node power agent: reads GPU power, applies the cap the PowerBudget controller asks for "
        "(Node annotation kubetier.io/power-cap, watts per GPU) and reports power and cap state in the Node "
        "annotation kubetier.io/power-report at a fixed cadence.",
    )
    p.add_argument(
        "--node", "--node-name", default=os.environ.get("NODE_NAME", ""), help="this node's name (default: $NODE_NAME)"
    )
    p.add_argument(
        "--backend",
        choices=("nvml", "simulated"),
        default="nvml",
        help="nvml: real GPUs (needs privileges, see the chart); simulated: engine simulators (default: %(default)s)",
    )
    p.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="URL",
        help="simulated backend: an engine simulator's base URL on loopback, one per simulated GPU (repeat)",
    )
    p.add_argument("--report-interval", type=positive_float, default=1.0, help="seconds between reports (default: 1)")
    p.add_argument(
        "--sample-interval", type=positive_float, default=0.25, help="seconds between power samples (default: 0.25)"
    )
    p.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster, else $KUBECONFIG)")
    p.add_argument(
        "--no-kube",
        action="store_true",
        help="do not talk to the apiserver: print one JSON report per line (dry run; caps stay as they are)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read and report power, never apply a cap (the requested cap is still reported)",
    )
    p.add_argument(
        "--preemption",
        choices=("none", "aws", "gcp", "azure"),
        default="none",
        help="also poll this cloud's instance metadata for a spot preemption notice and write its deadline on "
        "the Node (kubetier.io/preemption-deadline) for the spot controller (default: none)",
    )
    p.add_argument("--metadata-url", default=None, help="metadata endpoint base URL (default: the cloud's own)")
    p.add_argument("--vm-name", default="", help="Azure: this VM's name in scheduled events")
    p.add_argument(
        "--preemption-interval", type=positive_float, default=2.0, help="seconds between metadata polls (default: 2)"
    )
    p.add_argument("--once", action="store_true", help="sample, print one report and exit (implies --no-kube)")
    p.add_argument("--log-level", default="INFO", help="(default: %(default)s)")
    return p


def make_backend(args: argparse.Namespace) -> PowerBackend:
    if args.backend == "simulated":
        from kubetier.agent.simulated import SimulatedBackend

        return SimulatedBackend(args.engine)
    if args.engine:
        raise ValueError("--engine applies to --backend simulated only")
    from kubetier.agent.nvml import NvmlBackend

    return NvmlBackend()


def _print(report: NodePowerReport) -> None:
    print(json.dumps(report.wire(), sort_keys=True), flush=True)


async def _run(args: argparse.Namespace, backend: PowerBackend) -> int:
    config = AgentConfig(node=args.node, report_interval_s=args.report_interval, sample_interval_s=args.sample_interval)
    no_kube = args.no_kube or args.once
    api = None
    if not no_kube:
        from kubetier.kube.client import KubeClient

        api = KubeClient.connect(args.kubeconfig, field_manager="kubetier-agent")
    agent = Agent(backend, api, config, emit=_print if no_kube else None, apply_caps=not args.dry_run)
    try:
        if args.once:
            await agent.sample()
            report = await agent.report_once()
            return 1 if report.error else 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_agent(agent, api, args, stop)
        return 0
    finally:
        if api is not None:
            await api.aclose()


async def run_agent(agent: Agent, api: Any, args: argparse.Namespace, stop: asyncio.Event) -> None:
    """The power loop, and the preemption-notice poller beside it when ``--preemption`` names a cloud."""
    if args.preemption == "none" or api is None:
        await agent.run(stop)
        return
    import httpx

    from kubetier.agent.preemption import MetadataPoller, watch_for_notice

    async with httpx.AsyncClient(timeout=2.0) as http:
        poller = MetadataPoller(args.preemption, http, base_url=args.metadata_url, vm_name=args.vm_name)
        notice = asyncio.create_task(
            watch_for_notice(poller, agent.config.node, api, interval_s=args.preemption_interval, stop=stop)
        )
        try:
            await agent.run(stop)
        finally:
            notice.cancel()
            try:
                await notice
            except (asyncio.CancelledError, Exception):
                pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per sample otherwise
    if not args.node:
        print("kubetier agent: --node (or $NODE_NAME) is required", file=sys.stderr)
        return 2
    try:
        backend = make_backend(args)
    except (BackendError, ValueError, ImportError) as exc:
        print(f"kubetier agent: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, backend))
    finally:
        backend.close()
