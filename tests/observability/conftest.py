"""promtool and prometheus from the Go module proxy (image/gotools.py, cached outside the
repository). Outside CI a missing binary skips with the command that builds it; with
CI=true it fails (`make test` builds them first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def go_tool(name: str) -> str:
    res = subprocess.run(
        [sys.executable, str(REPO / "image" / "gotools.py"), "path", name], capture_output=True, text=True
    )
    if res.returncode != 0:
        msg = f"{name} is not built: run `python3 image/gotools.py install {name}` (minutes, cached)"
        if IN_CI:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return res.stdout.strip()


@pytest.fixture(scope="session")
def promtool() -> str:
    return go_tool("promtool")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return go_tool("prometheus")
