"""Fixtures: uvloop, and engine simulators served in-process on a free loopback port."""

from __future__ import annotations

import pytest
import uvloop

from kubetier.engine_sim.app import EngineSimulator, SimConfig
from kubetier.lean_http import close_connections, port_of
from kubetier.policy.latency import load_profile


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def engine_url():
    """``sim, base_url = await engine_url(time_scale=...)``."""
    started = []

    async def _start(**config):
        sim = EngineSimulator(load_profile("llama-3.1-8b-h100"), SimConfig(**config))
        server = await sim.serve("127.0.0.1", 0)
        started.append((sim, server))
        return sim, f"http://127.0.0.1:{port_of(server)}"

    yield _start
    for sim, server in started:
        server.close()
        close_connections(server)
        await sim.stop()
