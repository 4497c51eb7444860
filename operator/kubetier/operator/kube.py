"""The one layer that talks to the Kubernetes API (httpx, async).

Everything above it (``reconcile``) passes plain dicts; everything below is HTTP. kopf
does its own watching; this client does the reads and writes of the reconcile, using
the credentials kopf's login produced, so both act as the same identity.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

import httpx

from kubetier.api.modelservice import GROUP, PLURAL, VERSION
from kubetier.operator.model import FIELD_MANAGER


@dataclass(frozen=True)
class Resource:
    prefix: str  # "/api/v1" or "/apis/<group>/<version>"
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        out = self.prefix
        if self.namespaced and namespace:
            out += f"/namespaces/{namespace}"
        out += f"/{self.plural}"
        if name:
            out += f"/{name}"
        if subresource:
            out += f"/{subresource}"
        return out


RESOURCES: dict[str, Resource] = {
    "ConfigMap": Resource("/api/v1", "configmaps"),
    "Service": Resource("/api/v1", "services"),
    "Pod": Resource("/api/v1", "pods"),
    "Event": Resource("/api/v1", "events"),
    "Node": Resource("/api/v1", "nodes", namespaced=False),
    "Deployment": Resource("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": Resource("/apis/policy/v1", "poddisruptionbudgets"),
    "ModelService": Resource(f"/apis/{GROUP}/{VERSION}", PLURAL),
}

# The kinds desired() produces, i.e. what the operator lists, applies and prunes.
CHILD_KINDS = ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget")


class KubeError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str):
        self.status = status
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")


class KubeApi:
    def __init__(self, client: httpx.AsyncClient):
        self._client = client

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_url(cls, url: str, token: str | None = None) -> KubeApi:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return cls(httpx.AsyncClient(base_url=url, headers=headers, timeout=30))

    @classmethod
    def from_connection_info(cls, info: Any) -> KubeApi:
        """From kopf's ``ConnectionInfo`` (what ``login_with_kubeconfig`` etc. return)."""
        verify: ssl.SSLContext | bool = True
        if info.server.startswith("https"):
            ctx = ssl.create_default_context()
            if info.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif info.ca_path:
                ctx.load_verify_locations(cafile=info.ca_path)
            elif info.ca_data:
                ctx.load_verify_locations(cadata=_pem(info.ca_data).decode())
            cert, key = (
                _material(info.certificate_path, info.certificate_data),
                _material(info.private_key_path, info.private_key_data),
            )
            try:
                if cert[0]:
                    ctx.load_cert_chain(certfile=cert[0], keyfile=key[0])
            finally:
                # The context holds the key now: leave no private key behind in /tmp.
                for path, temporary in (cert, key):
                    if temporary:
                        os.unlink(path)
            verify = ctx
        headers = {}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = httpx.BasicAuth(info.username, info.password) if info.username and info.password else None
        return cls(httpx.AsyncClient(base_url=info.server, headers=headers, verify=verify, auth=auth, timeout=30))

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------ verbs

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._client.request(method, path, **kwargs)
        if response.status_code >= 400 and response.status_code != 404:
            raise KubeError(response.status_code, method, path, response.text)
        return response

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        response = await self._request("GET", RESOURCES[kind].path(namespace, name))
        return None if response.status_code == 404 else response.json()

    async def list(
        self, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else {}
        response = await self._request("GET", RESOURCES[kind].path(namespace), params=params)
        if response.status_code == 404:
            return []
        listing = response.json()
        items = listing.get("items") or []
        # List items carry neither kind nor apiVersion; put them back so a listed object
        # compares equal to the object we render (else every reconcile would write).
        for item in items:
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", listing.get("apiVersion") or _api_version(RESOURCES[kind]))
        return items

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply under kubetier's field manager (forced: we own these fields)."""
        meta = obj["metadata"]
        response = await self._request(
            "PATCH",
            RESOURCES[obj["kind"]].path(meta.get("namespace"), meta["name"]),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            json=obj,
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
        return response.json()

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        await self._request("DELETE", RESOURCES[kind].path(namespace, name), json={"propagationPolicy": "Background"})

    async def patch_status(self, kind: str, namespace: str | None, name: str, status: dict[str, Any]) -> dict[str, Any]:
        response = await self._request(
            "PATCH",
            RESOURCES[kind].path(namespace, name, "status"),
            params={"fieldManager": FIELD_MANAGER},
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        return response.json()

    async def create(self, kind: str, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        response = await self._request(
            "POST", RESOURCES[kind].path(namespace), json=obj, params={"fieldManager": FIELD_MANAGER}
        )
        return response.json()


def _api_version(resource: Resource) -> str:
    return resource.prefix.removeprefix("/apis/").removeprefix("/api/")


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
