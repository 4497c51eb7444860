"""NVML backend: real GPUs through ``nvidia-ml-py`` (imported as ``pynvml``).

Reading: the instantaneous power field (``NVML_FI_DEV_POWER_INSTANT``) where the driver
has it; otherwise ``nvmlDeviceGetPowerUsage``, which on Ampere and later is a 1 s
average (too slow to catch a prefill burst, so only a fallback).

Capping: lock the SM clock range (``nvmlDeviceSetGpuLockedClocks``): it takes effect in
about 10 ms (Perseus measured it), against seconds for a power-limit change to settle and
~40 s for out-of-band rack power commands (POLCA). The clock for a cap of ``C`` watts on
a GPU of maximum ``M`` and idle ``I`` inverts the square law of
:mod:`kubetier.policy.power_cap`: ``f = f_max * sqrt((C - I) / (M - I))``, rounded down to
a supported clock. The board power limit is then set to ``C`` as the backstop that
guarantees the bound (slower, enforced by the GPU's own controller); where clocks cannot
be locked (``NotSupported``, ``NoPermission``) the power limit alone caps.

Privileges: both setters need root in the GPU's namespace: the DaemonSet runs privileged
(or with ``CAP_SYS_ADMIN``) with the NVIDIA container runtime exposing ``/dev/nvidia*``
and ``libnvidia-ml.so``; see the chart's ``nodeAgent`` values.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from kubetier.agent.backend import BackendError
from kubetier.api.node_power import GpuPower
from kubetier.policy.power_cap import POWER_CLOCK_EXPONENT

# Hopper idles near 80 W of 700 W (H200 measured 80.3 W); without a better figure the
# clock for a cap assumes the same share.
DEFAULT_IDLE_SHARE = 0.115


class NvmlBackend:
    name = "nvml"

    def __init__(self, nvml: ModuleType | None = None, idle_share: float = DEFAULT_IDLE_SHARE) -> None:
        self.nvml: Any = nvml if nvml is not None else importlib.import_module("pynvml")
        n = self.nvml
        try:
            n.nvmlInit()
            self.handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]
        except n.NVMLError as exc:
            raise BackendError(f"NVML: cannot open the GPUs: {exc}") from exc
        self.max_watts: list[float] = []
        self.limits: list[tuple[float, float]] = []
        self.clocks: list[list[int]] = []
        for h in self.handles:
            self.max_watts.append(n.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000.0)
            lo, hi = n.nvmlDeviceGetPowerManagementLimitConstraints(h)
            self.limits.append((lo / 1000.0, hi / 1000.0))
            mem = max(n.nvmlDeviceGetSupportedMemoryClocks(h))
            self.clocks.append(sorted(n.nvmlDeviceGetSupportedGraphicsClocks(h, mem)))
        self.idle_share = idle_share
        self.cap_watts: float | None = None
        self.clock_locking = True  # until the driver says otherwise
        self.notes: list[str] = []

    def _watts(self, h: Any) -> float:
        n = self.nvml
        try:
            values = n.nvmlDeviceGetFieldValues(h, [n.NVML_FI_DEV_POWER_INSTANT])
            v = values[0]
            if v.nvmlReturn == n.NVML_SUCCESS:
                return float(v.value.uiVal) / 1000.0
        except n.NVMLError:
            pass
        return float(n.nvmlDeviceGetPowerUsage(h)) / 1000.0

    def read(self) -> list[GpuPower]:
        n = self.nvml
        out = []
        for i, h in enumerate(self.handles):
            try:
                watts = self._watts(h)
            except n.NVMLError as exc:
                raise BackendError(f"NVML: GPU {i}: cannot read power: {exc}") from exc
            out.append(GpuPower(index=i, watts=watts, max_watts=self.max_watts[i], cap_watts=self.cap_watts))
        return out

    def clock_for_cap(self, i: int, cap_watts: float) -> int:
        """Highest supported SM clock (MHz) at which GPU ``i`` should draw at most ``cap_watts``."""
        supported = self.clocks[i]
        top = supported[-1]
        maximum = self.max_watts[i]
        idle = maximum * self.idle_share
        share = max(0.0, min(1.0, (cap_watts - idle) / (maximum - idle)))
        target = top * share ** (1.0 / POWER_CLOCK_EXPONENT)
        fitting = [c for c in supported if c <= target]
        return fitting[-1] if fitting else supported[0]

    def set_cap(self, cap_watts: float | None) -> None:
        n = self.nvml
        for i, h in enumerate(self.handles):
            try:
                if cap_watts is None:
                    if self.clock_locking:
                        n.nvmlDeviceResetGpuLockedClocks(h)
                    n.nvmlDeviceSetPowerManagementLimit(h, int(self.max_watts[i] * 1000))
                    continue
                if self.clock_locking:
                    try:
                        n.nvmlDeviceSetGpuLockedClocks(h, self.clocks[i][0], self.clock_for_cap(i, cap_watts))
                    except (n.NVMLError_NotSupported, n.NVMLError_NoPermission) as exc:
                        self.clock_locking = False
                        self.notes.append(f"GPU {i}: SM clocks cannot be locked ({exc}); capping by power limit only")
                lo, hi = self.limits[i]
                n.nvmlDeviceSetPowerManagementLimit(h, int(max(lo, min(hi, cap_watts)) * 1000))
            except n.NVMLError as exc:
                raise BackendError(
                    f"NVML: GPU {i}: cannot {'lift' if cap_watts is None else 'set'} the cap: {exc}"
                ) from exc
        self.cap_watts = cap_watts

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass
