"""Fixtures: uvloop, and engine simulators served in-process on a free loopback port."""

from __future__ import annotations

import pytest
import uvloop

from engine_sim_servers import InProcessEngines


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def engine_url():
    """``sim, base_url = await engine_url(time_scale=...)``."""
    engines = InProcessEngines()
    yield engines.start
    await engines.close()
