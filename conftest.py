"""Repository-wide pytest rule: with CI=true a skipped test is a failed test.

Outside CI, tests whose prerequisite is missing (helm for the chart tests, a cluster for
e2e) skip with the command that provides it. In CI nothing may be missing, so a skip
means a check did not run: it is reported as a failure, whichever conftest or test
raised it (``.ci/run`` sets CI=true itself). Expected failures (xfail) stay as they are.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: a skipped test is a failure in CI ({reason})"
    return report


# tests/test_ci_rule.py runs this rule in a separate pytest session.
pytest_plugins = ["pytester"]
