"""The Go tools some tests run (prometheus, promtool), built from the Go module proxy by
image/gotools.py and cached outside the repository. Outside CI a missing binary skips the
test with the command that builds it; with CI=true it fails (`make test` builds them first).

Imported by name (``from go_tool_binaries import go_tool``) by tests/ and e2e/ alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def go_tool(name: str) -> str:
    """The path of the built ``name``, or skip (fail in CI) saying how to build it."""
    res = subprocess.run(
        [sys.executable, str(REPO / "image" / "gotools.py"), "path", name], capture_output=True, text=True
    )
    if res.returncode != 0:
        msg = f"{name} is not built: run `python3 image/gotools.py install {name}` (minutes, cached)"
        if IN_CI:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return res.stdout.strip()
