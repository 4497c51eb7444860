"""Fixtures: uvloop, and engine simulators served in-process on a free loopback port."""

from __future__ import annotations

import pytest
import uvloop

from engine_sim_servers import InProcessEngines

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def sim_server():
    """``sim, base_url = await sim_server(time_scale=..., ...)`` (SimConfig fields)."""
    engines = InProcessEngines()
    yield engines.start
    await engines.close()
