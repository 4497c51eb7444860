"""Development-only code (local engines for KWOK pods, the demo, benchmarks) stays out of
what `kubetier operator` and `kubetier router` load; the benchmarks are still reachable
through the `kubetier` command.

The import contract in pyproject.toml checks the static import graph; this checks what a
real process has in ``sys.modules`` after starting the runtime command's parser.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kubetier.cli import DEV_TOOLS

DEV_MODULES = (
    "kubetier.localdev",
    "kubetier.demo",
    "kubetier.router.bench",
    "kubetier.router.bench_routing",
    "kubetier.sim",
    "kubetier.engine_sim",
)

LOADED_BY = """
import json, sys
from kubetier.cli import main
try:
    main([{command!r}, "--help"])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.startswith("kubetier"))))
"""


def modules_loaded_by(command: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", LOADED_BY.format(command=command)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "command, runtime_module", [("operator", "kubetier.operator.main"), ("router", "kubetier.router.main")]
)
def test_runtime_commands_load_no_development_code(command, runtime_module):
    loaded = modules_loaded_by(command)
    assert runtime_module in loaded  # the command really was loaded
    dev = [m for m in loaded if m.startswith(DEV_MODULES)]
    assert not dev, f"`kubetier {command}` imports development-only modules: {dev}"


@pytest.mark.parametrize("command, tool", sorted(DEV_TOOLS))
def test_each_dev_tool_is_dispatched_by_the_cli_and_answers_help(command, tool):
    proc = subprocess.run(
        [sys.executable, "-m", "kubetier.cli", command, tool, "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()
    assert DEV_TOOLS[(command, tool)].startswith(DEV_MODULES)
