"""A router in this test's event loop, its client port on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from kubetier.lean_http import port_of, start_server
from kubetier.router.app import Router


@contextlib.asynccontextmanager
async def serving(router: Router, start: bool = True) -> AsyncIterator[str]:
    """Serve ``router`` on a free loopback port and yield its base URL; stop it after.
    ``start=False`` for a test that runs the router's loops itself."""
    if start:
        router.start()
    front = await start_server(router.handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port_of(front)}"
    finally:
        front.close()
        await router.stop()
