"""The NVML backend against a fake ``pynvml`` module (no GPU here): which calls it makes, in which order."""

from __future__ import annotations

import types

import pytest

from kubetier.agent.backend import BackendError
from kubetier.agent.nvml import NvmlBackend


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_NoPermission(NVMLError):
    pass


def fake_nvml(gpus: int = 2, instant: bool = True, lock_error: type[Exception] | None = None):
    calls: list[tuple] = []
    state = {"limit": {i: 700_000 for i in range(gpus)}}

    def field_values(h, ids):
        assert ids == [186]
        ret = 0 if instant else 3
        return [types.SimpleNamespace(nvmlReturn=ret, value=types.SimpleNamespace(uiVal=412_000 + h))]

    def set_locked(h, lo, hi):
        calls.append(("lock", h, lo, hi))
        if lock_error is not None:
            raise lock_error("not here")

    def set_limit(h, mw):
        calls.append(("limit", h, mw))
        state["limit"][h] = mw

    m = types.SimpleNamespace(
        NVMLError=NVMLError,
        NVMLError_NotSupported=NVMLError_NotSupported,
        NVMLError_NoPermission=NVMLError_NoPermission,
        NVML_FI_DEV_POWER_INSTANT=186,
        NVML_SUCCESS=0,
        nvmlInit=lambda: calls.append(("init",)),
        nvmlShutdown=lambda: calls.append(("shutdown",)),
        nvmlDeviceGetCount=lambda: gpus,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetPowerManagementDefaultLimit=lambda h: 700_000,
        nvmlDeviceGetPowerManagementLimitConstraints=lambda h: (200_000, 700_000),
        nvmlDeviceGetSupportedMemoryClocks=lambda h: [2619, 1593],
        nvmlDeviceGetSupportedGraphicsClocks=lambda h, mem: list(range(1980, 344, -15)),
        nvmlDeviceGetFieldValues=field_values,
        nvmlDeviceGetPowerUsage=lambda h: 300_000 + h,
        nvmlDeviceSetGpuLockedClocks=set_locked,
        nvmlDeviceResetGpuLockedClocks=lambda h: calls.append(("reset", h)),
        nvmlDeviceSetPowerManagementLimit=set_limit,
    )
    return m, calls


def test_reads_instantaneous_power_where_available_else_the_average():
    m, _ = fake_nvml(instant=True)
    gpus = NvmlBackend(m).read()
    assert [g.watts for g in gpus] == [412.0, 412.001]
    assert all(g.max_watts == 700 and g.cap_watts is None for g in gpus)
    m, _ = fake_nvml(instant=False)
    assert [g.watts for g in NvmlBackend(m).read()] == [300.0, 300.001]


def test_cap_locks_sm_clocks_first_then_sets_the_power_limit_backstop():
    m, calls = fake_nvml()
    b = NvmlBackend(m)
    b.set_cap(420)
    # idle 0.115 x 700 = 80.5 W; sqrt((420 - 80.5) / (700 - 80.5)) = 0.740 -> 1980 x 0.740 = 1465.8 MHz,
    # rounded down to a supported clock (1980 - 15k): 1455.
    assert calls[1:] == [("lock", 0, 345, 1455), ("limit", 0, 420_000), ("lock", 1, 345, 1455), ("limit", 1, 420_000)]
    assert [g.cap_watts for g in b.read()] == [420, 420]
    calls.clear()
    b.set_cap(None)
    assert calls == [("reset", 0), ("limit", 0, 700_000), ("reset", 1), ("limit", 1, 700_000)]
    assert [g.cap_watts for g in b.read()] == [None, None]


def test_cap_below_the_power_limit_range_is_clamped():
    m, calls = fake_nvml(gpus=1)
    NvmlBackend(m).set_cap(150)
    assert calls[-1] == ("limit", 0, 200_000)


@pytest.mark.parametrize("err", [NVMLError_NotSupported, NVMLError_NoPermission])
def test_falls_back_to_power_limit_when_clocks_cannot_be_locked(err):
    m, calls = fake_nvml(gpus=2, lock_error=err)
    b = NvmlBackend(m)
    b.set_cap(420)
    # GPU 0 tries the lock and fails; GPU 1 is not even tried.
    assert calls[1:] == [("lock", 0, 345, 1455), ("limit", 0, 420_000), ("limit", 1, 420_000)]
    assert not b.clock_locking and "power limit only" in b.notes[0]


def test_other_nvml_errors_surface_as_backend_errors_naming_the_gpu():
    m, _ = fake_nvml(gpus=1)

    def broken(h, mw):
        raise NVMLError("Insufficient Power")

    m.nvmlDeviceSetPowerManagementLimit = broken
    with pytest.raises(BackendError, match="GPU 0: cannot set the cap"):
        NvmlBackend(m).set_cap(420)
