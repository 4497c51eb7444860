"""The one layer that talks to the Kubernetes API (httpx, async), shared by the
operator, the router's discovery and the node agent.

Everything above it passes plain dicts (API-shaped JSON); everything below is HTTP.
kopf does its own watching of the objects it handles; this client does the reads,
writes and watches the controllers need, with the same credentials as kopf's login
(``from_connection``), so both act as the same identity. Every request is counted per
verb and kind (``counts``): that is how the reconcile benchmark and the steady-state
test see API calls per minute and writes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from kubetier.kube.connection import ConnectionInfo, discover, ssl_context
from kubetier.kube.resources import resource

WRITE_VERBS = frozenset({"apply", "patch", "create", "delete"})


class KubeError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str):
        self.status = status
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")


class WatchExpired(KubeError):
    """The resourceVersion a watch started from is gone (HTTP 410): list again."""


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict[str, Any]


class RequestCounts(Counter[tuple[str, str]]):
    """Requests made, keyed by (verb, kind); verbs: get, list, watch, apply, patch, create, delete."""

    def writes(self) -> int:
        return sum(n for (verb, _kind), n in self.items() if verb in WRITE_VERBS)

    def total(self) -> int:
        return sum(self.values())


class KubeClient:
    def __init__(self, http: httpx.AsyncClient, field_manager: str = "kubetier"):
        self._client = http
        self.field_manager = field_manager
        self.counts = RequestCounts()

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_url(cls, url: str, token: str | None = None, field_manager: str = "kubetier") -> KubeClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return cls(httpx.AsyncClient(base_url=url, headers=headers, timeout=30), field_manager)

    @classmethod
    def from_connection(cls, info: ConnectionInfo | Any, field_manager: str = "kubetier") -> KubeClient:
        """From our ``ConnectionInfo`` or kopf's (the same attribute names)."""
        headers = {}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = httpx.BasicAuth(info.username, info.password) if info.username and info.password else None
        verify = ssl_context(info)
        # Watches hold a connection each; leave room for them beside the requests of the
        # callers' (bounded) concurrent work, and keep them open: a TLS handshake per
        # request costs both ends CPU.
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        timeout = httpx.Timeout(30, pool=120)
        http = httpx.AsyncClient(
            base_url=info.server, headers=headers, verify=verify, auth=auth, timeout=timeout, limits=limits
        )
        return cls(http, field_manager)

    @classmethod
    def connect(cls, kubeconfig: str | None = None, field_manager: str = "kubetier") -> KubeClient:
        """In-cluster ServiceAccount, else the kubeconfig (explicit, $KUBECONFIG, ~/.kube/config)."""
        return cls.from_connection(discover(kubeconfig), field_manager)

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------ verbs

    async def _request(self, verb: str, kind: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.counts[(verb, kind)] += 1
        response = await self._client.request(method, path, **kwargs)
        if response.status_code >= 400 and response.status_code != 404:
            raise KubeError(response.status_code, method, path, response.text)
        return response

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        response = await self._request("get", kind, "GET", resource(kind).path(namespace, name))
        return None if response.status_code == 404 else response.json()

    async def get_raw(self, path: str) -> str:
        """A non-resource path as text (``/metrics``, ``/readyz``)."""
        response = await self._request("get", "raw", "GET", path)
        if response.status_code == 404:
            raise KubeError(404, "GET", path, response.text)
        return response.text

    async def list_versioned(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """Items and the list's resourceVersion (where a watch continues from)."""
        params = {"labelSelector": label_selector} if label_selector else {}
        if field_selector:
            params["fieldSelector"] = field_selector
        response = await self._request("list", kind, "GET", resource(kind).path(namespace), params=params)
        if response.status_code == 404:
            return [], ""
        listing = response.json()
        items = listing.get("items") or []
        # List items carry neither kind nor apiVersion; put them back so a listed object
        # compares equal to the object we render (else every reconcile would write).
        for item in items:
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", listing.get("apiVersion") or resource(kind).api_version)
        return items, str((listing.get("metadata") or {}).get("resourceVersion") or "")

    async def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        return (await self.list_versioned(kind, namespace, label_selector, field_selector))[0]

    async def watch(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        resource_version: str = "",
        timeout_s: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """Events after ``resource_version`` until the server ends the watch (after
        ``timeout_s``). Raises ``WatchExpired`` when that version is too old (410)."""
        params: dict[str, str] = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        if resource_version:
            params["resourceVersion"] = resource_version
        if label_selector:
            params["labelSelector"] = label_selector
        path = resource(kind).path(namespace)
        self.counts[("watch", kind)] += 1
        timeout = httpx.Timeout(30, read=timeout_s + 30)
        async with self._client.stream("GET", path, params=params, timeout=timeout) as response:
            if response.status_code == 410:
                raise WatchExpired(410, "WATCH", path, (await response.aread()).decode(errors="replace"))
            if response.status_code >= 400:
                raise KubeError(response.status_code, "WATCH", path, (await response.aread()).decode(errors="replace"))
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    code = int(obj.get("code") or 500)
                    error = WatchExpired if code == 410 else KubeError
                    raise error(code, "WATCH", path, str(obj.get("message", "")))
                if event.get("type") != "BOOKMARK":
                    obj.setdefault("kind", kind)
                    obj.setdefault("apiVersion", resource(kind).api_version)
                yield WatchEvent(str(event.get("type")), obj)

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply under this client's field manager (forced: we own these fields)."""
        meta = obj["metadata"]
        kind = obj["kind"]
        response = await self._request(
            "apply",
            kind,
            "PATCH",
            resource(kind).path(meta.get("namespace"), meta["name"]),
            params={"fieldManager": self.field_manager, "force": "true"},
            json=obj,
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
        return response.json()

    async def delete(self, kind: str, namespace: str | None, name: str, grace_period_s: int | None = None) -> None:
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if grace_period_s is not None:
            options["gracePeriodSeconds"] = grace_period_s
        await self._request("delete", kind, "DELETE", resource(kind).path(namespace, name), json=options)

    async def patch(
        self, kind: str, namespace: str | None, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        """JSON merge patch (RFC 7386) of an object or its subresource."""
        response = await self._request(
            "patch",
            kind,
            "PATCH",
            resource(kind).path(namespace, name, subresource),
            params={"fieldManager": self.field_manager},
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        return response.json()

    async def patch_status(self, kind: str, namespace: str | None, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return await self.patch(kind, namespace, name, {"status": status}, subresource="status")

    async def create(self, kind: str, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        response = await self._request(
            "create",
            kind,
            "POST",
            resource(kind).path(namespace),
            json=obj,
            params={"fieldManager": self.field_manager},
        )
        return response.json()
