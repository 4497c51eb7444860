"""``kubetier operator``: run the kubetier operator (kopf): the ModelService controller.

Layout: one package per controller under ``kubetier.operator``, each registering its
kopf handlers from ``register`` below:

- ``modelservice/``: ModelService -> Deployments, Services, PDBs, routing ConfigMap, status;
- ``powerbudget/``: the PowerBudget controller (POLCA power capping);
- ``spot/``: preemption notices on Nodes -> drained pods, replacements, Events.

Shared: ``runtime`` (kopf settings, login, the one KubeClient), ``identity`` (field
manager), and the Kubernetes access layer ``kubetier.kube``.

    kubetier operator --kubeconfig ~/.kube/config --all-namespaces
    kubetier operator --namespace team-a --standalone

In a pod it logs in with its ServiceAccount; elsewhere with ``--kubeconfig`` (or
$KUBECONFIG, or ~/.kube/config).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubetier operator", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        metavar="NS",
        help="watch only this namespace (repeatable; kopf globs allowed)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    parser.add_argument(
        "--standalone", action="store_true", help="no kopf peering: assume this is the only operator instance"
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        default=None,
        help="kopf peering object (ClusterKopfPeering with --all-namespaces, KopfPeering "
        "otherwise) through which replicas elect the active one; default: kopf's "
        "'default', falling back to standalone when it does not exist",
    )
    parser.add_argument(
        "--priority", type=int, default=None, help="this replica's kopf peering priority (the highest one runs)"
    )
    parser.add_argument(
        "--liveness", metavar="URL", default=None, help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument(
        "--router-status-url",
        metavar="URL",
        default=None,
        help="the router's status endpoint (http://…/kubetier/status), read for per-tier "
        "attainment (default: $KUBETIER_ROUTER_STATUS_URL; unset: attainment unknown)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        default=None,
        help="serve the operator's Prometheus metrics (/metrics) on this port (0: any free port; default: none)",
    )
    parser.add_argument(
        "--metrics-bind-address",
        metavar="ADDR",
        default="127.0.0.1",
        help="address the metrics port binds (default 127.0.0.1; the chart sets 0.0.0.0 for Prometheus)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error(f"--metrics-port: {args.metrics_port} is not a port number (0-65535)")
    if args.standalone and args.peering:
        parser.error("--standalone and --peering exclude each other")

    if args.kubeconfig:
        if not os.path.exists(args.kubeconfig):
            parser.error(f"--kubeconfig: no such file: {args.kubeconfig}")
        os.environ["KUBECONFIG"] = args.kubeconfig

    import kopf

    from kubetier.operator.modelservice.model import OperatorConfig

    config = OperatorConfig.from_env()
    if args.router_status_url:
        config = dataclasses.replace(config, router_status_url=args.router_status_url)
    register(kopf.get_default_registry())
    kopf.configure(verbose=args.verbose)
    if args.metrics_port is not None:
        from kubetier.operator import metrics

        bound = metrics.serve(args.metrics_port, args.metrics_bind_address)
        print(f"kubetier operator: metrics on http://{args.metrics_bind_address}:{bound}/metrics", flush=True)
    kopf.run(
        standalone=args.standalone,
        peering_name=args.peering,
        priority=args.priority,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(config=config, namespaces=list(args.namespace or ())),
    )
    return 0


def register(registry: Any, modelservice_resync_seconds: float | None = None) -> None:
    """Every controller's handlers into ``registry`` (tests pass their own registry and a
    short resync)."""
    from kubetier.operator import runtime
    from kubetier.operator.modelservice import handlers as modelservice
    from kubetier.operator.powerbudget import handlers as powerbudget
    from kubetier.operator.spot import handlers as spot

    runtime.register(registry)
    if modelservice_resync_seconds is None:
        modelservice.register(registry)
    else:
        modelservice.register(registry, resync_seconds=modelservice_resync_seconds)
    powerbudget.register(registry)
    spot.register(registry)
