"""The routers' demand push, operator side: long-poll ``GET /kubetier/demand`` on every
router replica (kubetier.router.scale_from_zero) and run the autoscaler at once for the
models that have a request held at zero, instead of at the next 2 s tick.

The replicas are the ones the autoscaler reads status from (``KUBETIER_ROUTER_STATUS_URLS``
or the router Service's EndpointSlices), re-read every few seconds, one long-poll each:
a router that comes or goes is picked up, and a router that restarted (its version went
down) is simply followed from its new version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import httpx

log = logging.getLogger("kubetier.operator.autoscaler")

STATUS_PATH = "/kubetier/status"
DEMAND_PATH = "/kubetier/demand"  # kubetier.router.scale_from_zero.DEMAND_PATH
POLL_S = 10.0  # the router answers at once on a new held request, else after this
RETRY_S = 2.0
REFRESH_S = 5.0


def demand_url(status_url: str) -> str:
    base = status_url[: -len(STATUS_PATH)] if status_url.endswith(STATUS_PATH) else status_url.rstrip("/")
    return base + DEMAND_PATH


def held_models(doc: dict[str, object]) -> set[str]:
    held = doc.get("held")
    return {m for m, tiers in held.items() if tiers} if isinstance(held, dict) else set()


class DemandFollower:
    """One long-poll per router replica; ``on_demand(models)`` when one holds requests."""

    def __init__(
        self,
        urls: Callable[[], list[str]],
        on_demand: Callable[[set[str]], Awaitable[None]],
        poll_s: float = POLL_S,
    ) -> None:
        self.urls = urls
        self.on_demand = on_demand
        self.poll_s = poll_s
        self.pushes = 0  # demand pushes acted on (tests, logs)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        try:
            while True:
                want = {demand_url(u) for u in self.urls()}
                for url in want - set(self._tasks):
                    self._tasks[url] = asyncio.create_task(self._follow(url), name=f"demand {url}")
                for url in set(self._tasks) - want:
                    self._tasks.pop(url).cancel()
                await asyncio.sleep(REFRESH_S)
        finally:
            await self.stop()

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _follow(self, url: str) -> None:
        version = -1
        async with httpx.AsyncClient(timeout=self.poll_s + 5.0) as client:
            while True:
                try:
                    first = version < 0
                    r = await client.get(url, params={"since": version, "timeout": 0 if first else self.poll_s})
                    r.raise_for_status()
                    doc = r.json()
                    new = int(doc["version"])
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    log.debug("demand long-poll %s: %s", url, exc)
                    version = -1
                    await asyncio.sleep(RETRY_S)
                    continue
                models = held_models(doc)
                if models and (first or new != version):
                    self.pushes += 1
                    log.info("router %s holds requests at zero for %s: autoscaling now", url, ", ".join(sorted(models)))
                    try:
                        await self.on_demand(models)
                    except Exception:
                        log.exception("autoscale on a demand push failed")
                version = new
