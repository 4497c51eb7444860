"""How to reach the API server: in-cluster ServiceAccount, a kubeconfig, or what kopf's
login produced. One ``ConnectionInfo`` whatever the source, so the operator, the
router's discovery and the node agent all build the same ``httpx`` client from it.

Supported kubeconfig credentials: bearer token (``token`` / ``tokenFile``), client
certificate (path or inline data), basic auth; CA by path or inline data, or
``insecure-skip-tls-verify``. ``exec`` and ``auth-provider`` plugins are not supported
and give a clear error naming them.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(RuntimeError):
    """No usable credentials in the kubeconfig."""


@dataclass(frozen=True)
class ConnectionInfo:
    server: str
    ca_path: str | None = None
    ca_data: str | bytes | None = None
    insecure: bool | None = None
    certificate_path: str | None = None
    certificate_data: str | bytes | None = None
    private_key_path: str | None = None
    private_key_data: str | bytes | None = None
    token: str | None = None
    scheme: str | None = None
    username: str | None = None
    password: str | None = None
    default_namespace: str | None = None


def in_cluster(directory: Path = SERVICE_ACCOUNT_DIR) -> ConnectionInfo | None:
    """The pod's ServiceAccount, or None outside a pod."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token_file = directory / "token"
    if not host or not port or not token_file.exists():
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    namespace_file = directory / "namespace"
    return ConnectionInfo(
        server=f"https://{host}:{port}",
        ca_path=str(directory / "ca.crt"),
        token=token_file.read_text().strip(),
        default_namespace=namespace_file.read_text().strip() if namespace_file.exists() else None,
    )


def kubeconfig_path(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0]).expanduser()
    return Path("~/.kube/config").expanduser()


def from_kubeconfig(path: str | Path | None = None, context: str | None = None) -> ConnectionInfo:
    """The current (or named) context of a kubeconfig file."""
    file = kubeconfig_path(str(path) if path else None)
    try:
        doc = yaml.safe_load(file.read_text()) or {}
    except OSError as exc:
        raise KubeConfigError(f"kubeconfig {file}: {exc.strerror or exc}") from exc
    base = file.parent

    def named(section: str, name: str | None) -> dict[str, Any]:
        for entry in doc.get(section) or ():
            if entry.get("name") == name:
                return dict(entry.get(section[:-1]) or {})
        raise KubeConfigError(f"kubeconfig {file}: no {section[:-1]} named {name!r}")

    ctx = named("contexts", context or doc.get("current-context"))
    cluster = named("clusters", ctx.get("cluster"))
    user = named("users", ctx.get("user")) if ctx.get("user") else {}
    for plugin in ("exec", "auth-provider"):
        if plugin in user:
            raise KubeConfigError(
                f"kubeconfig {file}: user {ctx.get('user')!r} uses {plugin!r}, which kubetier does not support"
            )

    def rel(value: str | None) -> str | None:
        return str(base / value) if value and not os.path.isabs(value) else value

    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(rel(user["tokenFile"]) or "").read_text().strip()
    return ConnectionInfo(
        server=str(cluster.get("server", "")).rstrip("/"),
        ca_path=rel(cluster.get("certificate-authority")),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")) or None,
        certificate_path=rel(user.get("client-certificate")),
        certificate_data=user.get("client-certificate-data"),
        private_key_path=rel(user.get("client-key")),
        private_key_data=user.get("client-key-data"),
        token=token,
        username=user.get("username"),
        password=user.get("password"),
        default_namespace=ctx.get("namespace"),
    )


def discover(kubeconfig: str | None = None) -> ConnectionInfo:
    """``kubeconfig`` if given, else the pod's ServiceAccount, else $KUBECONFIG or ~/.kube/config."""
    if kubeconfig is None:
        found = in_cluster()
        if found is not None:
            return found
    return from_kubeconfig(kubeconfig)


def ssl_context(info: Any) -> ssl.SSLContext | bool:
    """TLS settings for ``info`` (our ConnectionInfo or kopf's: the same attribute names)."""
    if not str(info.server).startswith("https"):
        return True
    ctx = ssl.create_default_context()
    if info.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif info.ca_path:
        ctx.load_verify_locations(cafile=str(info.ca_path))
    elif info.ca_data:
        ctx.load_verify_locations(cadata=_pem(info.ca_data).decode())
    cert = _material(info.certificate_path, info.certificate_data)
    key = _material(info.private_key_path, info.private_key_data)
    try:
        if cert[0]:
            ctx.load_cert_chain(certfile=cert[0], keyfile=key[0])
    finally:
        # The context holds the key now: leave no private key behind in /tmp.
        for path, temporary in (cert, key):
            if temporary and path:
                os.unlink(path)
    return ctx


def _pem(data: str | bytes) -> bytes:
    """kubeconfig's *-data fields are base64 of PEM; accept PEM as is too."""
    raw = data if isinstance(data, bytes) else data.encode()
    return raw if raw.lstrip().startswith(b"-----BEGIN") else base64.b64decode(raw)


def _material(path: Any, data: Any) -> tuple[str | None, bool]:
    """ssl wants files: write inline kubeconfig certificate data to a private temp file.
    Returns (path, whether it is a temp file the caller must remove)."""
    if path:
        return str(path), False
    if not data:
        return None, False
    raw = _pem(data)
    handle = tempfile.NamedTemporaryFile(prefix="kubetier-", suffix=".pem", delete=False)  # noqa: SIM115
    with handle:
        handle.write(raw)
    return handle.name, True
