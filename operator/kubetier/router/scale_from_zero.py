"""A tier at zero: how long the router holds its requests, and the demand push to the
operator (docs/autoscaling.md, "Scale from zero").

A request whose tier has no ready server that could take it (its own, or a tighter
tier's it may spill onto) is *held*, not refused: the operator is starting a server (or
the only server is still loading its model). The hold is bounded by the tier's TTFT plus
the expected start-up (``KUBETIER_EXPECTED_START_SECONDS``, the operator reads the same
variable and the chart sets both from ``autoscaling.expectedStartSeconds``, 60 s: vLLM's
8B engine start of about 14 s before weights to about 48 s for a full load). Unset or 0
(a router with a static server list, no autoscaler behind it): no hold beyond the
plain no-server grace, an outage is a 503 as before. Within the bound both kinds of
tier wait; past it a ``reject`` tier gets 429 with ``Retry-After`` and a ``queue`` tier
503 (no server came: an outage). The time spent waiting for the start-up is not charged to the request's TTFT when it is
routed: the client asked a tier that was at zero and accepted a start-up.

Demand push. Every request held at zero bumps a version number; the operator long-polls
``GET /kubetier/demand?since=<version>&timeout=<s>`` on **every** router replica (the
same replicas it reads ``/kubetier/status`` from), which answers at once when the
version moved past ``since`` and otherwise after ``timeout``. The operator then runs the
autoscaler at once instead of at its next 2 s tick. Why a long-poll rather than the
router writing to the API server: no RBAC for the router, no API write per burst, and
several router replicas need nothing from each other. Limit: with ``--workers K`` the
long-poll reaches one worker process; a request held by another worker is seen at the
operator's next tick (as ``/kubetier/status`` already is).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from urllib.parse import parse_qs

DEMAND_PATH = "/kubetier/demand"
STARTUP_ENV = "KUBETIER_EXPECTED_START_SECONDS"
DEFAULT_STARTUP_S = 0.0
MAX_POLL_S = 30.0


def expected_startup_s(environ: Mapping[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    try:
        v = float(env.get(STARTUP_ENV, DEFAULT_STARTUP_S))
    except ValueError:
        return DEFAULT_STARTUP_S
    return v if v >= 0 else DEFAULT_STARTUP_S


def hold_bound_s(ttft_s: float, startup_s: float) -> float:
    """Longest a request of a tier at zero is held for its server: TTFT + start-up."""
    return ttft_s + startup_s


class DemandBoard:
    """Requests held at zero per (model, tier), a version that moves on every new one,
    and the long-poll the operator waits on."""

    def __init__(self, startup_s: float | None = None) -> None:
        self.startup_s = expected_startup_s() if startup_s is None else startup_s
        self.version = 0
        self._held: dict[tuple[str, str], int] = {}
        self._changed: asyncio.Event | None = None

    def held(self, model: str, tier: str) -> None:
        key = (model, tier)
        self._held[key] = self._held.get(key, 0) + 1
        self.version += 1
        if self._changed is not None:
            self._changed.set()

    def released(self, model: str, tier: str) -> None:
        key = (model, tier)
        n = self._held.get(key, 0) - 1
        if n > 0:
            self._held[key] = n
        else:
            self._held.pop(key, None)

    def snapshot(self) -> dict[str, object]:
        models: dict[str, dict[str, int]] = {}
        for (m, t), n in sorted(self._held.items()):
            models.setdefault(m, {})[t] = n
        return {"version": self.version, "held": models}

    async def wait(self, since: int, timeout_s: float) -> dict[str, object]:
        """The snapshot once ``version > since``, or after ``timeout_s``."""
        if self.version <= since and timeout_s > 0:
            if self._changed is None:
                self._changed = asyncio.Event()
            deadline = asyncio.get_running_loop().time() + min(timeout_s, MAX_POLL_S)
            while self.version <= since:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    break
        return self.snapshot()


def poll_args(path_and_query: str) -> tuple[int, float]:
    """(since, timeout_s) from ``/kubetier/demand?since=N&timeout=S`` (bad values: 0)."""
    query = parse_qs(path_and_query.partition("?")[2])
    try:
        since = int(query.get("since", ["0"])[0])
    except ValueError:
        since = 0
    try:
        timeout_s = max(0.0, min(MAX_POLL_S, float(query.get("timeout", ["0"])[0])))
    except ValueError:
        timeout_s = 0.0
    return since, timeout_s


# --------------------------------------------------------------------------- an engine not serving yet

SCALE_FROM_ZERO_LATE = "scale-from-zero-late"
# Re-queues of one request after "loading"/"sleeping" answers (each waits for a good
# health check first, so this bounds a flapping engine, not a slow load).
MAX_REQUEUES = 20


def engine_not_serving_yet(status: int, body: bytes) -> bool:
    """A 503 saying the model is loading or asleep (the engine simulator's and vLLM's
    sleep-mode wording): the pod is Ready to Kubernetes (no readiness probe under KWOK,
    or a probe on a path that answers before the weights are in) but the engine is not;
    the request is held again, not failed."""
    if status != 503:
        return False
    text = body[:2048].lower()
    return b"loading" in text or b"sleeping" in text or b"asleep" in text
