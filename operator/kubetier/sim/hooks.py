"""The fleet simulator's plug-in interfaces: where outcomes go, and control-loop hooks.

They live apart from the engine (``engine.py`` re-exports them) because the engine may be
compiled with mypyc (``kubetier.sim.native``), and a compiled class cannot be subclassed
by interpreted code: the sinks and hooks of autoscaling, power and spot subclass these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Simulator


class OutcomeSink:
    """Receives one call per request when it completes or is rejected."""

    def record(
        self,
        tier: int,
        ttft_s: float,
        tpot_s: float,
        deadline_ok: bool,
        rejected: bool,
        spilled: bool,
        queue_s: float,
        server: int,
    ) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Hook:
    """Base of the control-loop plug-ins (autoscaling, pre-warm, power, spot).

    ``interval_s`` > 0 makes the simulator call :meth:`on_tick` every interval with the
    :class:`Simulator`; hooks act only through its public methods (``add_server``,
    ``drain_server``, ``remove_server``, ``set_slowdown``, ``set_model``, ``call_at``, ``servers``,
    ``now``).
    ``schedule()`` may return one-off ``(time, callback(sim, now))`` pairs, e.g. a spot
    preemption schedule (notice = drain, then remove).
    """

    interval_s: float = 0.0

    def schedule(self) -> Iterable[tuple[float, Callable[[Simulator, float], None]]]:
        return ()

    def on_tick(self, sim: Simulator, now: float) -> None:
        pass
