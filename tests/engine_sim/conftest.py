"""Fixtures: uvloop, and engine simulators served in-process on a free loopback port."""

from __future__ import annotations

import pytest
import uvloop

from kubetier.engine_sim.app import EngineSimulator, SimConfig
from kubetier.lean_http import close_connections, port_of
from kubetier.policy.latency import load_profile

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def sim_server():
    """``sim, base_url = await sim_server(time_scale=..., ...)`` (SimConfig fields)."""
    started = []

    async def _start(profile: str = "llama-3.1-8b-h100", **config):
        sim = EngineSimulator(load_profile(profile), SimConfig(**config))
        server = await sim.serve("127.0.0.1", 0)
        started.append((sim, server))
        return sim, f"http://127.0.0.1:{port_of(server)}"

    yield _start
    for sim, server in started:
        server.close()
        close_connections(server)
        await sim.stop()
