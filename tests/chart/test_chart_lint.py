"""`helm lint` with the real helm binary, on the defaults and every valid values file."""

from __future__ import annotations

import subprocess

import pytest
from chart_support import CHART, VALUES_DIR

OK_VALUES = sorted(VALUES_DIR.glob("ok-*.yaml"))


def test_values_matrix_is_not_empty():
    assert len(OK_VALUES) >= 3, f"tests/chart/values/ok-*.yaml holds only {OK_VALUES}"


@pytest.mark.parametrize("values_file", [None, *OK_VALUES], ids=lambda p: "defaults" if p is None else p.stem)
def test_helm_lint_strict(helm, values_file):
    argv = [helm, "lint", "--strict", str(CHART)]
    if values_file is not None:
        argv += ["-f", str(values_file)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"helm lint failed:\n{res.stdout}\n{res.stderr}"
    assert "0 chart(s) failed" in res.stdout


def test_helm_lint_fails_on_bad_values(helm):
    """lint applies values.schema.json too: a values file that must fail makes it fail."""
    res = subprocess.run(
        [helm, "lint", str(CHART), "-f", str(VALUES_DIR / "bad-replicas-zero.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    assert "/operator/replicas" in res.stdout + res.stderr
