"""Simulated backend: each "GPU" is an engine simulator on loopback.

Reads ``kubetier_engine_power_watts`` (the power of the iteration running now: the
counterpart of NVML's instantaneous field), ``kubetier_engine_power_cap_watts`` and
``kubetier_engine_max_power_watts`` from ``/metrics``; caps through the simulator's
loopback-only ``PUT /admin/power-cap``, after which it runs its profile's capped
latency model (slower iterations, draw at most the cap).
"""

from __future__ import annotations

import httpx

from kubetier.agent.backend import BackendError
from kubetier.api.node_power import GpuPower

_WANTED = ("kubetier_engine_power_watts", "kubetier_engine_power_cap_watts", "kubetier_engine_max_power_watts")


def parse_power_metrics(text: str) -> dict[str, float]:
    """The three power gauges from a Prometheus text exposition (labels ignored)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("kubetier_engine_"):
            continue
        name, _, rest = line.partition("{")
        if name not in _WANTED:
            continue
        value = rest.rpartition("}")[2].split()[0]
        out[name] = float(value)
    return out


class SimulatedBackend:
    name = "simulated"

    def __init__(self, engine_urls: list[str], timeout_s: float = 2.0) -> None:
        if not engine_urls:
            raise ValueError("the simulated backend needs at least one engine URL")
        self.urls = [u.rstrip("/") for u in engine_urls]
        self.http = httpx.Client(timeout=timeout_s)

    def read(self) -> list[GpuPower]:
        out = []
        for i, url in enumerate(self.urls):
            try:
                r = self.http.get(url + "/metrics")
                r.raise_for_status()
            except httpx.HTTPError as exc:
                raise BackendError(f"engine {i} ({url}): cannot read /metrics: {exc}") from exc
            m = parse_power_metrics(r.text)
            if "kubetier_engine_max_power_watts" not in m or "kubetier_engine_power_watts" not in m:
                raise BackendError(
                    f"engine {i} ({url}): /metrics has no power gauges (not a kubetier engine simulator?)"
                )
            cap = m.get("kubetier_engine_power_cap_watts") or None
            out.append(
                GpuPower(
                    index=i,
                    watts=m["kubetier_engine_power_watts"],
                    max_watts=m["kubetier_engine_max_power_watts"],
                    cap_watts=cap,
                )
            )
        return out

    def set_cap(self, cap_watts: float | None) -> None:
        for i, url in enumerate(self.urls):
            try:
                r = self.http.put(url + "/admin/power-cap", json={"capWatts": cap_watts})
            except httpx.HTTPError as exc:
                raise BackendError(f"engine {i} ({url}): cannot set the cap: {exc}") from exc
            if r.status_code != 200:
                raise BackendError(f"engine {i} ({url}): cap refused: HTTP {r.status_code}: {r.text[:300]}")

    def close(self) -> None:
        self.http.close()
