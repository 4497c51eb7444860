"""The repository-wide CI rule (conftest.py at the root): with CI=true a skip fails."""

from __future__ import annotations

from pathlib import Path

import pytest

RULE = (Path(__file__).resolve().parents[1] / "conftest.py").read_text()
SKIPPING = """
import pytest

def test_needs_a_missing_tool():
    pytest.skip("helm not found")

@pytest.mark.xfail(reason="known")
def test_known_failure():
    assert False

def test_passes():
    assert True
"""


@pytest.mark.parametrize("ci, outcome", [("true", {"failed": 1}), ("", {"skipped": 1})])
def test_skips_fail_only_in_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest(RULE.replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(test_rule=SKIPPING)
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=1, xfailed=1, **outcome)
    if ci:
        result.stdout.fnmatch_lines(["*CI=true: a skipped test is a failure in CI*helm not found*"])
