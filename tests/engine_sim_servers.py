"""Engine simulators served in this process on free loopback ports, for the tests that
talk to an engine over real HTTP (tests/engine_sim, tests/agent); closed together when
the test ends.

Imported by name (``from engine_sim_servers import InProcessEngines``), never from conftest.
"""

from __future__ import annotations

from typing import Any

from kubetier.engine_sim.app import EngineSimulator, SimConfig
from kubetier.lean_http import close_connections, port_of
from kubetier.policy.latency import load_profile


class InProcessEngines:
    """``sim, base_url = await engines.start(time_scale=..., ...)`` (SimConfig fields), and
    ``await engines.close()`` at the end."""

    def __init__(self) -> None:
        self.started: list[tuple[EngineSimulator, Any]] = []

    async def start(self, profile: str = "llama-3.1-8b-h100", **config: Any) -> tuple[EngineSimulator, str]:
        sim = EngineSimulator(load_profile(profile), SimConfig(**config))
        server = await sim.serve("127.0.0.1", 0)
        self.started.append((sim, server))
        return sim, f"http://127.0.0.1:{port_of(server)}"

    async def close(self) -> None:
        for sim, server in self.started:
            server.close()
            close_connections(server)
            await sim.stop()
