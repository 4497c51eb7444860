"""What the e2e tests share: kubectl, waiting, the operator process, test objects.

The suite talks to whatever cluster ``KUBECONFIG`` names (the local KWOK cluster from
``make cluster-up``, or kind); nothing here assumes which.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

from kubetier.localdev import access
from kubetier.localdev.access import Kubectl, KubectlError  # noqa: F401  (re-exported for the tests)
from kubetier.localdev.processes import kill_process, kubetier_command, start_process, stop_process

if TYPE_CHECKING:
    from kubetier.localdev import LocalEngines

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KUBETIER_CACHE") or Path.home() / ".cache" / "kubetier").expanduser()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CLUSTER_UP = "make cluster-up && export KUBECONFIG=$(.venv/bin/python e2e/cluster/cluster.py kubeconfig-path)"

GROUP = "kubetier.io"
MANAGED = "app.kubernetes.io/managed-by=kubetier"
SERVICE_LABEL = "kubetier.io/service"
TIER_LABEL = "kubetier.io/tier"
ROLE_LABEL = "kubetier.io/role"
GPU = "nvidia.com/gpu"
ZONE_LABEL = "topology.kubernetes.io/zone"
CAPACITY_LABEL = "karpenter.sh/capacity-type"

T = TypeVar("T")
RBAC_DENIED = re.compile(r'forbidden: User \\?"[^"\\]+\\?" cannot ')


# The operator's identity in the suite: its own ServiceAccount, bound to a ClusterRole
# built from kubetier.operator.rbac (what the Helm chart ships).
OPERATOR_NAMESPACE = "kubetier-system"
OPERATOR_SA = "kubetier-operator"
OPERATOR_ROLE = "kubetier-operator-e2e"


def operator_rbac_objects(namespace: str, sa: str, role_name: str) -> list[dict]:
    """ServiceAccount, ClusterRole and binding, the role built from the rules the operator
    module exports (the same rules the Helm chart ships)."""
    from kubetier.operator import rbac

    role = rbac.cluster_role(role_name)
    assert role["rules"], "kubetier.operator.rbac declares no rules"
    return access.service_account_objects(namespace, sa, role)


def service_account_kubeconfig(
    kubectl: Kubectl,
    admin_kubeconfig: str,
    namespace: str,
    sa: str,
    path: Path,
    *,
    user: str = "kubetier",
    duration: str = "1h",
    cluster_role: dict | None = None,
) -> Path:
    """A kubeconfig at ``path`` that authenticates as ServiceAccount ``namespace/sa`` only
    (a fresh token); with ``cluster_role``, the ServiceAccount, that role and its binding
    are applied first."""
    if cluster_role is not None:
        kubectl.apply(access.service_account_objects(namespace, sa, cluster_role))
    token = kubectl("create", "token", sa, "-n", namespace, f"--duration={duration}").strip()
    return access.token_kubeconfig(admin_kubeconfig, token, path, user)


def need(ok: Any, missing: str, how: str) -> None:
    """Skip (outside CI) or fail (in CI) when a prerequisite of the suite is absent."""
    if ok:
        return
    msg = f"{missing}; {how}"
    if IN_CI:
        pytest.fail(f"CI=true and {msg}", pytrace=False)
    pytest.skip(msg)


def find_kubectl() -> str | None:
    """$KUBECTL, else the pinned kubectl from the cluster cache, else the one on PATH
    (the cache comes first: a system kubectl may be a distant version or a dispatcher)."""
    explicit = os.environ.get("KUBECTL")
    if explicit and Path(explicit).is_file() and os.access(explicit, os.X_OK):
        return explicit
    return access.find_kubectl()


def wait_until(
    fn: Callable[[], T],
    what: str,
    timeout: float = 60,
    interval: float = 0.25,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` and the last state."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            detail = describe() if describe else repr(last)
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\nlast state: {detail}", pytrace=False)
        time.sleep(interval)


# --------------------------------------------------------------------------- objects


def tier(
    name: str,
    ttft_ms: int,
    tpot_ms: int,
    priority: int,
    replicas: int,
    spot: str = "never",
    on_demand_floor: int = 0,
    max_replicas: int | None = None,
) -> dict:
    return {
        "name": name,
        "ttftMs": ttft_ms,
        "tpotMs": tpot_ms,
        "priority": priority,
        "attainmentPercent": 90,
        "replicas": {"min": replicas, "max": max(replicas, max_replicas or replicas)},
        "capacity": {"spot": spot, "onDemandFloor": on_demand_floor},
    }


def model_service(
    name: str,
    namespace: str,
    tiers: list[dict],
    gpus_per_replica: int = 2,
    gpu_product: str | None = "NVIDIA-H100-80GB-HBM3",
) -> dict:
    resources: dict[str, Any] = {"gpusPerReplica": gpus_per_replica, "cpu": "4", "memory": "16Gi"}
    if gpu_product:
        resources["gpuProduct"] = gpu_product
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "llama-3.1-8b", "source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "engine": {"kind": "simulator", "port": 8000},
            "resources": resources,
            "latencyProfile": {"builtin": "llama-3.1-8b-h100"},
            "tiers": tiers,
        },
    }


def simulator_service(
    name: str,
    namespace: str,
    model: str,
    tiers: list[dict],
    engine_args: list[str],
    *,
    max_num_seqs: int | None = None,
    gpus_per_replica: int = 1,
    **spec: Any,
) -> dict:
    """A ModelService of engine simulators for the loopback engines (kubetier.localdev
    .LocalEngines): small CPU and memory requests, the built-in llama-3.1-8b-h100 profile;
    ``spec`` adds fields (e.g. ``sharedPool``)."""
    engine: dict[str, Any] = {"kind": "simulator", "args": engine_args}
    if max_num_seqs is not None:
        engine["maxNumSeqs"] = max_num_seqs
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": model, "source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "engine": engine,
            "resources": {"gpusPerReplica": gpus_per_replica, "cpu": "500m", "memory": "512Mi"},
            "latencyProfile": {"builtin": "llama-3.1-8b-h100"},
            **spec,
            "tiers": tiers,
        },
    }


def three_tier_service(name: str, namespace: str) -> dict:
    """interactive on on-demand only, standard may use spot, batch prefers spot."""
    return model_service(
        name,
        namespace,
        [
            tier("interactive", 300, 30, 100, replicas=2, spot="never"),
            tier("standard", 1000, 60, 50, replicas=2, spot="allowed", on_demand_floor=1),
            tier("batch", 5000, 150, 10, replicas=3, spot="preferred"),
        ],
    )


# --------------------------------------------------------------------------- observing


def condition(obj: dict, ctype: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def tier_status(obj: dict, name: str) -> dict | None:
    for t in (obj.get("status") or {}).get("tiers") or []:
        if t.get("name") == name:
            return t
    return None


def gpu_request(pod: dict) -> int:
    total = 0
    for c in pod["spec"].get("containers", []):
        res = c.get("resources") or {}
        total += int((res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU) or 0)
    return total


def serving_pods(kubectl: Kubectl, namespace: str, service: str, tier_name: str | None = None) -> list[dict]:
    selector = f"{SERVICE_LABEL}={service},{ROLE_LABEL}=serving"
    if tier_name:
        selector += f",{TIER_LABEL}={tier_name}"
    return [p for p in kubectl.items("pods", namespace, selector) if not p["metadata"].get("deletionTimestamp")]


def running(pods: list[dict]) -> list[dict]:
    return [p for p in pods if p.get("status", {}).get("phase") == "Running"]


# --------------------------------------------------------------------------- the operator


class OperatorProcess:
    """`kubetier operator` as a subprocess with its own kubeconfig (ServiceAccount token)."""

    def __init__(self, kubeconfig: Path, log_path: Path, extra_args: list[str] | None = None) -> None:
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.args = extra_args if extra_args is not None else operator_args()
        # Its Prometheus metrics on loopback (a fixed port across restarts of this process).
        self.metrics_port = free_port()
        self.args = [*self.args, "--metrics-port", str(self.metrics_port), "--metrics-bind-address", "127.0.0.1"]
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "operator already running"
        self.starts += 1
        with open(self.log_path, "a") as out:
            out.write(f"\n===== operator start #{self.starts} {time.strftime('%H:%M:%S')} =====\n")
            out.flush()
            self.proc = start_process(
                kubetier_command("operator", "--kubeconfig", str(self.kubeconfig), *self.args),
                out,
                env={"KUBECONFIG": str(self.kubeconfig)},
                unset=["KUBERNETES_SERVICE_HOST"],  # never an in-cluster identity or the admin kubeconfig
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as a crash or an OOM kill would be."""
        if self.proc is not None:
            kill_process(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def forbidden_lines(self) -> list[str]:
        """Lines where RBAC refused the operator something (`... is forbidden: User "..."
        cannot <verb> ...`); other 403s, such as writes into a terminating namespace, are not."""
        text = self.log_tail(2_000_000)
        return [line for line in text.splitlines() if RBAC_DENIED.search(line)]


# The suite's all-namespaces operator, once started (conftest's `operator` fixture).
SESSION_OPERATORS: list[OperatorProcess] = []


@contextlib.contextmanager
def session_operator_paused(why: str):
    """Stop the suite's all-namespaces operator while a test runs its own (the chart's,
    the demo's): two operators must not reconcile the same objects. Restarted after."""
    stopped = [op for op in SESSION_OPERATORS if op.alive()]
    for op in stopped:
        op.stop()
        print(f"stopped the suite's operator: {why}")
    try:
        yield
    finally:
        for op in stopped:
            op.start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def artifacts_dir(prefix: str) -> Path:
    """Where a test keeps its logs: ``$KUBETIER_E2E_ARTIFACTS`` (CI collects it), else a
    fresh temporary folder named ``prefix...``."""
    path = Path(os.environ.get("KUBETIER_E2E_ARTIFACTS") or tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- a namespaced stack
# Tests that need their own operator (an environment of its own, one namespace) start it
# with routers and loopback engines for the KWOK pods: NamespacedStack and its parts.


def local_router_command(port: int, namespace: str) -> list[str]:
    """`kubetier router` on loopback ``port``, its endpoints the loopback engines of
    ``namespace``'s pods (kubetier.localdev.LocalEngines), rediscovered every second."""
    return kubetier_command(
        "router", "--port", str(port), "--namespace", namespace, "--local-endpoints", "--discovery-interval", "1"
    )


def router_status(base_url: str) -> dict:
    """The router's ``/kubetier/status`` document; {} while it does not answer."""
    try:
        doc: dict = httpx.get(f"{base_url}/kubetier/status", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return doc


def start_local_engines(api_client: Any, namespace: str, workdir: Path) -> LocalEngines:
    """Loopback engine simulators for ``namespace``'s KWOK pods, logs in ``workdir/engines``."""
    from kubetier.localdev import LocalEngines

    (workdir / "engines").mkdir(exist_ok=True)
    engines = LocalEngines(api_client, namespace=namespace, log_dir=workdir / "engines")
    engines.start()
    return engines


class NamespacedStack:
    """A test's own operator, watching one namespace under its own ServiceAccount (bound to
    a ClusterRole ``role_name`` built from kubetier.operator.rbac), with routers on loopback
    and loopback engines for the namespace's KWOK pods; logs in :attr:`workdir`.

    Built before the test's ``try``; :meth:`close` in its ``finally`` deletes the test's
    ModelServices while the operator still runs (its finalizers), then stops the
    processes and engines and deletes the ClusterRole and its binding."""

    def __init__(self, kubectl: Kubectl, admin_kubeconfig: str, namespace: str, role_name: str, prefix: str) -> None:
        from kubetier.operator import rbac

        self.kubectl, self.admin_kubeconfig, self.namespace = kubectl, admin_kubeconfig, namespace
        self.workdir = artifacts_dir(prefix)
        self.role = rbac.cluster_role(role_name)
        self.operator_kubeconfig = service_account_kubeconfig(
            kubectl,
            admin_kubeconfig,
            namespace,
            OPERATOR_SA,
            self.workdir / "operator.kubeconfig",
            user="kubetier-operator",
            cluster_role=self.role,
        )
        self.procs: list[subprocess.Popen] = []
        self.engines: LocalEngines | None = None

    def start_operator(self, env: dict[str, str]) -> None:
        """`kubetier operator --namespace <ns> --standalone`, log ``operator.log``."""
        argv = kubetier_command(
            "operator", "--kubeconfig", str(self.operator_kubeconfig), "--namespace", self.namespace, "--standalone"
        )
        self.procs.append(start_process(argv, self.workdir / "operator.log", env=env))

    def start_router(self, port: int, log_name: str, env: dict[str, str] | None = None) -> None:
        """A router on loopback ``port`` (:func:`local_router_command`), log ``log_name``."""
        self.procs.append(
            start_process(
                local_router_command(port, self.namespace),
                self.workdir / log_name,
                env={"KUBECONFIG": self.admin_kubeconfig, **(env or {})},
            )
        )

    def start_engines(self, api_client: Any) -> None:
        self.engines = start_local_engines(api_client, self.namespace, self.workdir)

    def close(self, services: list[str]) -> None:
        kubectl, ns = self.kubectl, self.namespace
        kubectl("delete", "modelservice", *services, "-n", ns, "--ignore-not-found", "--wait=true",
                "--timeout=60s", check=False, timeout=90)  # fmt: skip
        for p in self.procs:
            stop_process(p)
        if self.engines is not None:
            self.engines.close()
        kubectl("delete", "clusterrolebinding,clusterrole", self.role["metadata"]["name"], "--ignore-not-found",
                check=False)  # fmt: skip


def operator_args() -> list[str]:
    extra = os.environ.get("KUBETIER_OPERATOR_ARGS")
    return extra.split() if extra is not None else ["--all-namespaces", "--standalone"]
