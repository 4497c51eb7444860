"""A small in-memory Kubernetes API over real HTTP on 127.0.0.1 (stdlib only).

Enough of the API for the reconcile: GET/LIST (label selectors), server-side apply
(PATCH application/apply-patch+yaml creates or merges), merge-patch of the status
subresource, POST (events), DELETE. Like the apiserver it fills in defaults we never
send (imagePullPolicy, clusterIPs, ...) and bumps metadata.generation on spec changes,
so "nothing to change" is tested against a live object that is a superset of ours.
Every request is recorded, to count writes.
"""

from __future__ import annotations

import copy
import itertools
import json
import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonpatch  # installed with kmock (a pinned dev dependency)

KINDS = {
    "configmaps": "ConfigMap",
    "services": "Service",
    "pods": "Pod",
    "events": "Event",
    "nodes": "Node",
    "namespaces": "Namespace",
    "secrets": "Secret",
    "endpointslices": "EndpointSlice",
    "deployments": "Deployment",
    "poddisruptionbudgets": "PodDisruptionBudget",
    "modelservices": "ModelService",
    "powerbudgets": "PowerBudget",
    "customresourcedefinitions": "CustomResourceDefinition",
}
CLUSTER_SCOPED = {"nodes", "namespaces", "customresourcedefinitions", "powerbudgets"}
# Discovery: group/version -> plurals served there (what kopf scans at start-up).
GROUP_VERSIONS = {
    "v1": ["configmaps", "services", "pods", "events", "nodes", "namespaces", "secrets"],
    "discovery.k8s.io/v1": ["endpointslices"],
    "apps/v1": ["deployments"],
    "policy/v1": ["poddisruptionbudgets"],
    "apiextensions.k8s.io/v1": ["customresourcedefinitions"],
    "kubetier.io/v1alpha1": ["modelservices", "powerbudgets"],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _resource_list(group_version: str) -> dict[str, Any]:
    resources = []
    for plural in GROUP_VERSIONS[group_version]:
        base = {"namespaced": plural not in CLUSTER_SCOPED, "kind": KINDS[plural]}
        resources.append({"name": plural, "singularName": KINDS[plural].lower(), "verbs": VERBS, **base})
        if plural in ("modelservices", "deployments", "powerbudgets"):
            resources.append({"name": f"{plural}/status", "singularName": "", "verbs": ["get", "patch"], **base})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def _discovery(path: str) -> dict[str, Any] | None:
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"]}
    if path == "/apis":
        groups = [
            {
                "name": gv.split("/")[0],
                "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
            }
            for gv in GROUP_VERSIONS
            if "/" in gv
        ]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    if path == "/api/v1":
        return _resource_list("v1")
    parts = [p for p in path.split("/") if p]
    if len(parts) == 3 and parts[0] == "apis" and f"{parts[1]}/{parts[2]}" in GROUP_VERSIONS:
        return _resource_list(f"{parts[1]}/{parts[2]}")
    if path == "/version":
        return {"major": "1", "minor": "34", "gitVersion": "v1.34.4-fake"}
    return None


def _selector(query: dict[str, list[str]]) -> dict[str, str | None]:
    """Equality terms of a labelSelector (all the operator and router use), and existence
    terms ("key": the label is set, value None; the PowerBudget controller's pod list)."""
    terms = [term for term in (query.get("labelSelector", [""])[0]).split(",") if term]
    return {k: v for k, _, v in (t.partition("=") for t in terms)} | {t: None for t in terms if "=" not in t}


def _matches(obj: dict[str, Any], selector: dict[str, str | None]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return all((a in labels) if b is None else labels.get(a) == b for a, b in selector.items())


def _merge(base: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _server_defaults(obj: dict[str, Any]) -> None:
    kind = obj.get("kind")
    if kind == "Deployment":
        spec = obj["spec"]
        spec.setdefault("progressDeadlineSeconds", 600)
        pod = spec["template"]["spec"]
        pod.setdefault("restartPolicy", "Always")
        pod.setdefault("dnsPolicy", "ClusterFirst")
        pod.setdefault("schedulerName", "default-scheduler")
        for c in pod["containers"]:
            c.setdefault("imagePullPolicy", "IfNotPresent")
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:
                    c[probe].setdefault("successThreshold", 1)
                    c[probe].setdefault("timeoutSeconds", 1)
                    c[probe]["httpGet"].setdefault("scheme", "HTTP")
            # The apiserver rewrites quantities canonically: "1.5" -> "1500m".
            for section in c.get("resources", {}).values():
                for key, value in section.items():
                    if value == "0.5":
                        section[key] = "500m"
    elif kind == "Service":
        spec = obj["spec"]
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec["clusterIPs"] = [spec.get("clusterIP", "10.0.0.1")]


def _drop_image_volumes(obj: dict[str, Any]) -> None:
    """What a Kubernetes 1.33-1.34 API server with the ImageVolume gate off does (seen on the
    local 1.34.4 one): drop ``volumes[].image`` and the mounts of those volumes, no error."""
    pod = ((obj.get("spec") or {}).get("template") or {}).get("spec")
    if not isinstance(pod, dict):
        return
    gone = {v["name"] for v in pod.get("volumes") or () if "image" in v}
    pod["volumes"] = [v for v in pod.get("volumes") or () if v["name"] not in gone]
    for c in pod.get("containers") or ():
        c["volumeMounts"] = [m for m in c.get("volumeMounts") or () if m["name"] not in gone]


class FakeKube:
    def __init__(self) -> None:
        self.image_volume_gate = True  # False: behave like an API server with ImageVolume off
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._rv = itertools.count(1)
        self._watchers: list[tuple[str, queue.Queue]] = []
        # Every change with its resourceVersion, so a watch resumes where a list ended
        # (like etcd's history); compact() forgets it, so old versions get 410 Gone.
        self._history: list[tuple[int, dict[str, Any]]] = []
        self._compacted = 0
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeKube:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ test helpers
    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (as a controller or kubectl would)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        self.store(obj)
        return obj

    def store(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace"), meta["name"])
        with self._lock:
            meta["resourceVersion"] = str(next(self._rv))
            event = "MODIFIED" if key in self.objects else "ADDED"
            self.objects[key] = obj
            self._notify(event, obj)

    def remove(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self._lock:
            gone = self.objects.pop((kind, namespace, name), None)
            if gone:
                gone["metadata"]["resourceVersion"] = str(next(self._rv))
                self._notify("DELETED", gone)
        return gone

    def compact(self) -> None:
        """Forget the change history: a watch from an older resourceVersion gets 410 Gone."""
        with self._lock:
            self._history.clear()
            self._compacted = next(self._rv)

    def _notify(self, event: str, obj: dict[str, Any]) -> None:
        """Called with the lock held."""
        entry = {"type": event, "object": copy.deepcopy(obj)}
        self._history.append((int(obj["metadata"]["resourceVersion"]), entry))
        for kind, q in list(self._watchers):
            if kind == obj["kind"]:
                q.put(entry)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self.objects.get((kind, namespace, name))
            return copy.deepcopy(found)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(o) for (k, _, _), o in self.objects.items() if k == kind]

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]

    def reset_requests(self) -> None:
        self.requests.clear()

    # ------------------------------------------------------------------ HTTP
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"null")

            def _route(self) -> tuple[str, str | None, str | None, str | None, dict[str, list[str]]]:
                url = urlsplit(self.path)
                parts = [p for p in url.path.split("/") if p]
                parts = parts[2:] if parts[0] == "api" else parts[3:]
                namespace = None
                if parts and parts[0] == "namespaces" and len(parts) > 2:
                    namespace, parts = parts[1], parts[2:]
                kind = KINDS[parts[0]]
                name = parts[1] if len(parts) > 1 else None
                sub = parts[2] if len(parts) > 2 else None
                return kind, namespace, name, sub, parse_qs(url.query)

            def _not_found(self, what: str) -> None:
                self._send(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "message": what})

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path))
                found = _discovery(urlsplit(self.path).path)
                if found is not None:
                    return self._send(200, found)
                kind, ns, name, _sub, query = self._route()
                if query.get("watch", ["false"])[0] in ("true", "1"):
                    return self._watch(kind, ns, query)
                if name:
                    obj = fake.get(kind, ns, name)
                    return self._send(200, obj) if obj else self._not_found(name)
                selector = _selector(query)
                with fake._lock:
                    items = [
                        copy.deepcopy(o)
                        for (k, n, _), o in fake.objects.items()
                        if k == kind and (ns is None or n == ns) and _matches(o, selector)
                    ]
                    version = str(next(fake._rv))
                api_version = items[0].get("apiVersion", "v1") if items else "v1"
                for item in items:  # like the apiserver: list items carry neither kind nor apiVersion
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                self._send(
                    200,
                    {
                        "kind": f"{kind}List",
                        "apiVersion": api_version,
                        "metadata": {"resourceVersion": version},
                        "items": items,
                    },
                )

            def _watch(self, kind: str, ns: str | None, query: dict[str, list[str]]) -> None:
                """Stream events as JSON lines until the timeout (HTTP/1.0: EOF ends it),
                from ``resourceVersion`` on when given, filtered by namespace and labels."""
                timeout = float(query.get("timeoutSeconds", ["30"])[0])
                since = int(query.get("resourceVersion", ["0"])[0] or 0)
                selector = _selector(query)
                q: queue.Queue = queue.Queue()
                with fake._lock:
                    gone = 0 < since < fake._compacted
                    backlog = [e for rv, e in fake._history if rv > since] if since else []
                    fake._watchers.append((kind, q))
                for entry in backlog:
                    q.put(entry)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                if gone:
                    expired = {
                        "kind": "Status",
                        "code": 410,
                        "reason": "Expired",
                        "message": "too old resource version",
                    }
                    self.wfile.write(json.dumps({"type": "ERROR", "object": expired}).encode() + b"\n")
                    fake._watchers.remove((kind, q))
                    return
                deadline = time.monotonic() + min(timeout, 30)
                try:
                    while time.monotonic() < deadline and not fake._closing.is_set():
                        try:
                            event = q.get(timeout=0.05)
                        except queue.Empty:
                            continue
                        obj = event["object"]
                        if obj["kind"] != kind or (ns is not None and obj["metadata"].get("namespace") != ns):
                            continue
                        if not _matches(obj, selector):
                            continue
                        self.wfile.write(json.dumps(event).encode() + b"\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    fake._watchers.remove((kind, q))

            def do_PATCH(self) -> None:
                fake.requests.append(("PATCH", self.path))
                kind, ns, name, sub, _query = self._route()
                body = self._body()
                ctype = self.headers.get("Content-Type", "")
                current = fake.get(kind, ns, name)
                if sub == "status":
                    if current is None:
                        return self._not_found(name)
                    current["status"] = _merge(current.get("status"), body["status"])
                    fake.store(current)
                    return self._send(200, current)
                if ctype != "application/apply-patch+yaml":
                    if current is None:
                        return self._not_found(name)
                    if ctype == "application/json-patch+json":  # kopf patches finalizers this way
                        merged = jsonpatch.apply_patch(current, body)
                    else:
                        merged = _merge(current, body)
                    fake.store(merged)
                    return self._send(200, merged)
                applied = copy.deepcopy(body)
                _server_defaults(applied)
                if not fake.image_volume_gate:
                    _drop_image_volumes(applied)
                if current is None:
                    return self._send(201, fake.put(applied))
                merged = copy.deepcopy(current)
                merged["metadata"] = _merge(current["metadata"], applied["metadata"])
                for key, value in applied.items():
                    if key not in ("metadata", "status", "apiVersion", "kind"):
                        merged[key] = value
                if merged.get("spec") != current.get("spec"):
                    merged["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
                fake.store(merged)
                self._send(200, merged)

            def do_POST(self) -> None:
                fake.requests.append(("POST", self.path))
                kind, ns, _name, _sub, _q = self._route()
                obj = self._body()
                obj.setdefault("kind", kind)
                meta = obj.setdefault("metadata", {})
                if "generateName" in meta and "name" not in meta:
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:8]
                meta.setdefault("namespace", ns)
                self._send(201, fake.put(obj))

            def do_DELETE(self) -> None:
                fake.requests.append(("DELETE", self.path))
                kind, ns, name, _sub, _q = self._route()
                gone = fake.remove(kind, ns, name)
                self._send(200, gone) if gone else self._not_found(name)

        return Handler
