"""Talking to a local cluster the way a user does: the real kubectl, and a
ServiceAccount-token kubeconfig so kubetier's components run under their own RBAC
(the same rules the Helm chart ships), never as cluster admin.

Shared by the demo and the e2e suite.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml


class KubectlError(RuntimeError):
    def __init__(self, args: list[str], rc: int, out: str, err: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {rc}:\n{err or out}")
        self.rc, self.out, self.err = rc, out, err


def cache_dir() -> Path:
    return Path(os.environ.get("KUBETIER_CACHE", Path.home() / ".cache" / "kubetier"))


def find_kubectl() -> str | None:
    """kubectl from the project's cache (what `make cluster-up` installs), else PATH."""
    cached = cache_dir() / "bin" / "kubectl"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which("kubectl")


class Kubectl:
    """The real kubectl against ``kubeconfig`` (what a user types)."""

    def __init__(self, binary: str, kubeconfig: str | os.PathLike) -> None:
        self.binary, self.kubeconfig = binary, str(kubeconfig)

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
        res = self.run(*args, input=input, timeout=timeout)
        if check and res.returncode != 0:
            raise KubectlError(list(args), res.returncode, res.stdout, res.stderr)
        return res.stdout

    def run(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [self.binary, "--kubeconfig", self.kubeconfig, *args]
        return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))

    def apply(self, obj: dict | list[dict], *extra: str) -> str:
        return self("apply", *extra, "-f", "-", input=json.dumps(as_list(obj)))

    def items(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[dict]:
        args = ["get", kind]
        args += ["-n", namespace] if namespace else ["-A"]
        if selector:
            args += ["-l", selector]
        return self.json(*args)["items"]


def as_list(obj: dict | list[dict]) -> dict:
    if isinstance(obj, list):
        return {"apiVersion": "v1", "kind": "List", "items": obj}
    return obj


def service_account_objects(namespace: str, sa: str, cluster_role: dict) -> list[dict]:
    """A ServiceAccount bound to ``cluster_role`` (which is created too)."""
    role_name = cluster_role["metadata"]["name"]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": namespace}},
        cluster_role,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
    ]


def token_kubeconfig(admin_kubeconfig: str | os.PathLike, token: str, path: Path, user: str = "kubetier") -> Path:
    """A kubeconfig for the same API server that authenticates with ``token`` only."""
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    ctx_name = admin.get("current-context")
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == ctx_name)
    cluster = dict(next(c["cluster"] for c in admin["clusters"] if c["name"] == ctx["cluster"]))
    if "certificate-authority" in cluster:  # inline it: the path is relative to the admin kubeconfig
        ca_path = Path(cluster.pop("certificate-authority"))
        if not ca_path.is_absolute():
            ca_path = Path(admin_kubeconfig).parent / ca_path
        cluster["certificate-authority-data"] = base64.b64encode(ca_path.read_bytes()).decode()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": user,
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "local", "user": user}}],
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path
