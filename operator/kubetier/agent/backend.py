"""The node agent's hardware seam: read GPU power, apply a power cap.

Two implementations: :mod:`kubetier.agent.nvml` (real GPUs through NVML) and
:mod:`kubetier.agent.simulated` (engine simulators on loopback). The agent loop knows
only this interface.
"""

from __future__ import annotations

from typing import Protocol

from kubetier.api.node_power import GpuPower


class BackendError(RuntimeError):
    """A read or an actuation failed; the message says which GPU and why."""


class PowerBackend(Protocol):
    name: str

    def read(self) -> list[GpuPower]:
        """One reading per GPU (watts now, maximum, cap in force)."""
        ...

    def set_cap(self, cap_watts: float | None) -> None:
        """Cap every GPU of the node at ``cap_watts`` (None: lift the caps)."""
        ...

    def close(self) -> None: ...
