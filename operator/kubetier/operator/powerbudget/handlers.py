"""kopf wiring of the PowerBudget controller: a timer per PowerBudget runs one control
tick every ``CONTROL_INTERVAL_S`` seconds ($KUBETIER_POWER_CONTROL_INTERVAL); deleting a
PowerBudget lifts its caps."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
import kopf

from kubetier.api.modelservice import GROUP, VERSION
from kubetier.api.powerbudget import PLURAL
from kubetier.kube import KubeError
from kubetier.operator import metrics, runtime
from kubetier.operator.powerbudget.controller import DomainMemory, lift_all, tick

# Half a second: the agents report every 0.5-1 s; a tick costs three list calls and a status patch.
CONTROL_INTERVAL_S = float(os.environ.get("KUBETIER_POWER_CONTROL_INTERVAL", "0.5"))


def _memory(memo: kopf.Memo, name: str) -> tuple[DomainMemory, asyncio.Lock]:
    domains: dict[str, tuple[DomainMemory, asyncio.Lock]] = memo.setdefault("power_domains", {})
    if name not in domains:
        domains[name] = (DomainMemory(), asyncio.Lock())
    return domains[name]


async def _tick(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    name = body.metadata.name or ""
    memory, lock = _memory(memo, name)
    async with lock:
        try:
            with metrics.reconciling("powerbudget"):
                result = await tick(runtime.client(memo), dict(body), memory)
        except KubeError as exc:
            raise kopf.TemporaryError(str(exc), delay=2) from exc
        except httpx.HTTPError as exc:
            raise kopf.TemporaryError(f"Kubernetes API unreachable: {exc!r}", delay=5) from exc
    metrics.record_power(name, result.status)
    if result.patched:
        logger.info(f"caps: {result.patched} ({result.decision.reason})")


async def _delete(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    lifted = await lift_all(runtime.client(memo), dict(body))
    memo.get("power_domains", {}).pop(body.metadata.name or "", None)
    metrics.forget_powerbudget(body.metadata.name or "")
    if lifted:
        logger.info(f"PowerBudget deleted: caps lifted on {lifted}")


def register(registry: kopf.OperatorRegistry, interval_s: float | None = None) -> None:
    interval = CONTROL_INTERVAL_S if interval_s is None else interval_s
    kopf.timer(GROUP, VERSION, PLURAL, interval=interval, registry=registry, id="power-control")(_tick)
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="lift-caps")(_delete)
