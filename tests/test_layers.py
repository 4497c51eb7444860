"""`kubetier.api` and `kubetier.policy` are pure: the same code drives the operator,
the router and the fleet simulator, so they must not pull in Kubernetes, HTTP or
metrics libraries. (import-linter checks the static imports in `make test`; this
checks what actually gets loaded.)"""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("kopf", "kubernetes", "httpx", "prometheus_client", "uvloop", "httptools")


def test_pure_layers_load_no_io_libraries():
    code = (
        "import pkgutil, importlib, sys, kubetier.api, kubetier.policy\n"
        "for pkg in (kubetier.api, kubetier.policy):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('_cli'):\n"
        "            importlib.import_module(m.name)\n"
        f"print(sorted(n for n in {FORBIDDEN!r} if n in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"pure layers imported {proc.stdout.strip()}"
