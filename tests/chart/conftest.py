"""Fixtures for the chart tests: the real helm binary and a renderer (shared pieces:
chart_support.py).

Outside CI a missing helm skips these tests with the command that installs it; with
CI=true it fails (and the root conftest fails any skip in CI).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from chart_support import CHART, NAMESPACE, RELEASE, RenderError, find_helm

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def helm() -> str:
    binary = find_helm()
    if binary is None:
        msg = "helm not found ($HELM, the cluster cache or PATH); run: make ingredients"
        if IN_CI:
            pytest.fail(f"CI=true and {msg}", pytrace=False)
        pytest.skip(msg)
    return binary


@pytest.fixture(scope="session")
def render(helm: str) -> Callable[..., list[dict]]:
    """`helm template` the chart; returns the rendered objects (hooks included)."""

    def _render(values_file: Path | None = None, *sets: str, namespace: str = NAMESPACE) -> list[dict]:
        argv = [helm, "template", RELEASE, str(CHART), "--namespace", namespace]
        if values_file is not None:
            argv += ["-f", str(values_file)]
        for s in sets:
            argv += ["--set", s]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RenderError(res.stderr.strip())
        return [d for d in yaml.safe_load_all(res.stdout) if d]

    return _render
