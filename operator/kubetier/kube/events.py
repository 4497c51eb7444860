"""Kubernetes Event bodies (core/v1 Event), pure: the caller posts them with
``KubeClient.create("Event", namespace, body)``."""

from __future__ import annotations

import datetime as dt
from typing import Any


def event_body(
    involved: dict[str, Any], type_: str, reason: str, message: str, component: str, now: dt.datetime
) -> dict[str, Any]:
    """An Event about ``involved`` (the object's own body: apiVersion, kind, metadata)."""
    meta = involved["metadata"]
    namespace = meta.get("namespace", "default")
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", ""),
            "kind": involved.get("kind", ""),
            "name": meta["name"],
            "namespace": namespace,
            "uid": meta.get("uid", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
