"""promtool and prometheus from the Go module proxy (image/gotools.py, cached outside the
repository). Outside CI a missing binary skips with the command that builds it; with
CI=true it fails (`make test` builds them first): tests/go_tool_binaries.py."""

from __future__ import annotations

import pytest

from go_tool_binaries import go_tool


@pytest.fixture(scope="session")
def promtool() -> str:
    return go_tool("promtool")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return go_tool("prometheus")
