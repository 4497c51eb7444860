#!/usr/bin/env python3
"""Run a helm-installed kubetier on a cluster whose pods run no containers (the local
KWOK cluster): the chart's operator and router become local processes with exactly the
arguments, environment and ServiceAccount of the chart's Deployments, and one engine
simulator per Running model-server pod stands in for the engine.

    helm install kubetier charts/kubetier -n kubetier-system --create-namespace
    .venv/bin/python charts/kubetier/hack/run_local.py --router-port 8080
    # router: http://127.0.0.1:8080/v1   (Ctrl-C stops everything this started)

Each component authenticates with a TokenRequest token of its own ServiceAccount, so the
chart's RBAC is what is exercised, never the admin kubeconfig. Servers bind 127.0.0.1.
The engine simulators are started through the admin kubeconfig (they annotate pods with
`kubetier.io/local-endpoint`, which the router honours only with `--local-endpoints`).
e2e/test_helm.py drives the same code.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

from kubetier.localdev.processes import free_loopback_port, kubetier_command, start_process, stop_process

COMPONENTS = ("operator", "router")


# --------------------------------------------------------------------------- pure


def loopback_args(args: list[str], ports: dict[str, int]) -> list[str]:
    """The chart's container arguments rebound to 127.0.0.1, with `--<flag>=...` ports replaced."""
    out = []
    for a in args:
        a = a.replace("0.0.0.0", "127.0.0.1")  # the chart binds pod IPs; local processes stay on loopback
        for flag, port in ports.items():
            if a.startswith(f"--{flag}="):
                a = re.sub(r"(:|=)\d+(/|$)", lambda m, port=port: f"{m.group(1)}{port}{m.group(2)}", a, count=1)
        out.append(a)
    return out


def plain_env(container: dict) -> dict[str, str]:
    """The container's literal environment (the settings the chart passes), minus HOME."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e and e["name"] != "HOME"}


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion of container arguments (unknown names stay as they are)."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def loopback_router_status(env: dict[str, str], router_port: int) -> dict[str, str]:
    """The operator's environment with the router status URL pointing at the local router.

    The chart gives the operator the router Service's cluster DNS name, which does not
    resolve outside the cluster: without this the status never shows attainment.
    """
    if "KUBETIER_ROUTER_STATUS_URL" not in env:
        return env  # router disabled in the chart: keep "attainment unknown"
    return {**env, "KUBETIER_ROUTER_STATUS_URL": f"http://127.0.0.1:{router_port}/kubetier/status"}


def local_command(component: str, container: dict, ports: dict[str, int], env: dict[str, str]) -> list[str]:
    """`kubetier <component> ...` for a local run of the chart's container."""
    assert container["command"] == ["kubetier", component], container["command"]
    args = [expand(a, env) for a in loopback_args(container.get("args", []), ports)]
    if component == "router":
        args.append("--local-endpoints")
    return [component, *args]


# --------------------------------------------------------------------------- I/O


class LocalProcess:
    """A `kubetier ...` subprocess with its own kubeconfig and log file."""

    def __init__(self, argv: list[str], kubeconfig: Path, log_path: Path, env: dict[str, str]) -> None:
        self.argv, self.log_path = argv, log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.proc = start_process(
            kubetier_command(*argv),
            self._log,
            env={**env, "KUBECONFIG": str(kubeconfig)},
            unset=["KUBERNETES_SERVICE_HOST"],  # never an in-cluster identity
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def forbidden(self) -> list[str]:
        """Log lines where the API server refused this identity something (RBAC)."""
        return [ln for ln in self.tail(5_000_000).splitlines() if " 403" in ln or "forbidden" in ln.lower()]

    def stop(self) -> None:
        stop_process(self.proc)
        if not self._log.closed:
            self._log.close()


class ChartOnLocalProcesses:
    """The release's operator and router as local processes (context manager)."""

    def __init__(
        self, kubectl, admin_kubeconfig: str, release: str, namespace: str, workdir: Path, router_port: int = 0
    ) -> None:
        self.kubectl, self.admin_kubeconfig = kubectl, admin_kubeconfig
        self.release, self.namespace, self.workdir = release, namespace, workdir
        self.router_port = router_port or free_loopback_port()
        self.procs: dict[str, LocalProcess] = {}

    def workload(self, component: str) -> dict:
        """The component's Deployment (or the operator's StatefulSet when it runs replicas)."""
        items = self.kubectl.items(
            "deployments,statefulsets",
            self.namespace,
            f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component={component}",
        )
        if len(items) != 1:
            raise SystemExit(
                f"expected one {component} workload of release {self.release!r} in namespace "
                f"{self.namespace!r}, found {len(items)}: is the chart installed there?"
            )
        return items[0]

    def replica(self, component: str, index: int = 0) -> LocalProcess:
        """Start replica `index` of a component (the pod index a StatefulSet pod would have)."""
        from kubetier.localdev.access import token_kubeconfig

        workload = self.workload(component)
        pod = workload["spec"]["template"]["spec"]
        sa = pod["serviceAccountName"]
        token = self.kubectl("create", "token", sa, "-n", self.namespace, "--duration=2h").strip()
        name = f"{component}-{index}"
        kc = token_kubeconfig(self.admin_kubeconfig, token, self.workdir / f"{name}.kubeconfig", user=sa)
        ports = (
            {"liveness": free_loopback_port(), "metrics-port": free_loopback_port()}
            if component == "operator"
            else {"port": self.router_port}
        )
        container = pod["containers"][0]
        pod_name = f"{workload['metadata']['name']}-{index}"
        env = {
            **plain_env(container),
            "POD_INDEX": str(index),
            "POD_ID": pod_name,
            "POD_NAME": pod_name,
            "POD_NAMESPACE": self.namespace,
        }
        if component == "operator":
            env = loopback_router_status(env, self.router_port)
        return LocalProcess(local_command(component, container, ports, env), kc, self.workdir / f"{name}.log", env)

    def start(self) -> ChartOnLocalProcesses:
        for component in COMPONENTS:
            self.procs[component] = self.replica(component)
        return self

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def __enter__(self) -> ChartOnLocalProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="admin kubeconfig (default: $KUBECONFIG)")
    p.add_argument("--release", default="kubetier", help="helm release name (default: %(default)s)")
    p.add_argument("--namespace", "-n", default="kubetier-system", help="release namespace (default: %(default)s)")
    p.add_argument("--router-port", type=int, default=8080, help="router port on 127.0.0.1 (default: %(default)s)")
    p.add_argument("--time-scale", type=float, default=1.0, help="engine simulator time factor (default: 1.0)")
    args = p.parse_args(argv)
    if not args.kubeconfig or not Path(args.kubeconfig).is_file():
        p.error(
            "--kubeconfig (or $KUBECONFIG) must name the cluster's admin kubeconfig; on the local cluster: "
            "export KUBECONFIG=$(.venv/bin/python e2e/cluster/cluster.py kubeconfig-path)"
        )

    from kubernetes import client, config

    from kubetier.localdev.access import Kubectl, find_kubectl
    from kubetier.localdev.engines import LocalEngines, engine_sim_command

    binary = find_kubectl()
    if binary is None:
        p.error("kubectl not found: run .venv/bin/python e2e/cluster/cluster.py install")
    kubectl = Kubectl(binary, args.kubeconfig)
    cfg = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)
    with (
        tempfile.TemporaryDirectory(prefix="kubetier-local-") as d,
        ChartOnLocalProcesses(
            kubectl, args.kubeconfig, args.release, args.namespace, Path(d), args.router_port
        ) as chart,
        client.ApiClient(cfg) as api,
        LocalEngines(api, command=engine_sim_command(time_scale=args.time_scale)),
    ):
        print(f"operator and router of release {args.release} running under their ServiceAccounts (logs in {d})")
        print(f"router: http://127.0.0.1:{chart.router_port}/v1   (Ctrl-C to stop)", flush=True)
        stop = []
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        while not stop:
            for name, proc in chart.procs.items():
                if not proc.alive():
                    print(f"{name} exited:\n{proc.tail()}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
