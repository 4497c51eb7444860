"""Preemption notices from the cloud's instance metadata endpoint, for the node agent.

Cloud tooling (Karpenter, AWS Node Termination Handler, GKE) leaves taints that the spot
controller reads, but not every cluster runs it, and a taint arrives only after that
tooling has polled. The agent polls the metadata endpoint itself and writes the deadline
on its Node (``kubetier.io/preemption-deadline``, ``kubetier.io/preemption-source``); the
spot controller treats it like any other notice.

Endpoints (the base URL is a parameter so tests and the demo point it at a local mock):

- AWS: IMDSv2 token (``PUT /latest/api/token``), then
  ``GET /latest/meta-data/spot/instance-action`` (404 until there is a notice; 2 minutes'
  warning);
- GCP: ``GET /computeMetadata/v1/instance/preempted`` with ``Metadata-Flavor: Google``
  (``TRUE`` once preempted; about 30 s);
- Azure: ``GET /metadata/scheduledevents?api-version=2020-07-01`` with ``Metadata: true``
  (a ``Preempt`` event naming this VM; about 30 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from kubetier.policy.spot import (
    DEADLINE_ANNOTATION,
    SOURCE_ANNOTATION,
    NoticeWindows,
    parse_aws_instance_action,
    parse_azure_scheduled_events,
    parse_gcp_preempted,
    rfc3339,
)

log = logging.getLogger("kubetier.agent.preemption")

SOURCES = ("aws", "gcp", "azure")
DEFAULT_BASE_URLS = {
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal",
    "azure": "http://169.254.169.254",
}


class NodePatcher(Protocol):
    async def patch(self, kind: str, namespace: str | None, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...


class MetadataPoller:
    """Asks one cloud's metadata endpoint whether this instance is about to go."""

    def __init__(
        self,
        source: str,
        http: httpx.AsyncClient,
        base_url: str | None = None,
        vm_name: str = "",
        windows: NoticeWindows | None = None,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown metadata source {source!r} (known: {', '.join(SOURCES)})")
        self.source = source
        self.http = http
        self.base = (base_url or DEFAULT_BASE_URLS[source]).rstrip("/")
        self.vm_name = vm_name
        self.windows = windows or NoticeWindows()

    async def deadline(self, now: float) -> float | None:
        """The notice's deadline (epoch seconds), or None. Transport errors propagate."""
        if self.source == "aws":
            token = await self.http.put(
                f"{self.base}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
            )
            headers = {"X-aws-ec2-metadata-token": token.text} if token.status_code == 200 else {}
            r = await self.http.get(f"{self.base}/latest/meta-data/spot/instance-action", headers=headers)
            return parse_aws_instance_action(r.text, now, self.windows) if r.status_code == 200 else None
        if self.source == "gcp":
            r = await self.http.get(
                f"{self.base}/computeMetadata/v1/instance/preempted", headers={"Metadata-Flavor": "Google"}
            )
            return parse_gcp_preempted(r.text, now, self.windows) if r.status_code == 200 else None
        r = await self.http.get(
            f"{self.base}/metadata/scheduledevents", params={"api-version": "2020-07-01"}, headers={"Metadata": "true"}
        )
        return parse_azure_scheduled_events(r.text, self.vm_name, now, self.windows) if r.status_code == 200 else None


def annotation_patch(deadline: float, source: str) -> dict[str, Any]:
    return {"metadata": {"annotations": {DEADLINE_ANNOTATION: rfc3339(deadline), SOURCE_ANNOTATION: source}}}


async def watch_for_notice(
    poller: MetadataPoller,
    node: str,
    api: NodePatcher,
    interval_s: float = 2.0,
    clock: Callable[[], float] = time.time,
    stop: asyncio.Event | None = None,
) -> float | None:
    """Poll until a notice appears (annotate the Node, return its deadline) or ``stop`` is set.

    A failed poll is logged and retried: the endpoint is local to the instance, and a
    missed poll costs one interval of the notice window, not the notice.
    """
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            deadline = await poller.deadline(clock())
        except httpx.HTTPError as exc:
            log.warning("metadata poll (%s) failed: %r", poller.source, exc)
            deadline = None
        if deadline is not None:
            await api.patch("Node", None, node, annotation_patch(deadline, poller.source))
            log.warning("preemption notice (%s): node %s goes at %s", poller.source, node, rfc3339(deadline))
            return deadline
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass
    return None
