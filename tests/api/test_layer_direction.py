"""The layer direction of docs/contracts.md, checked on the source so that a package
added later is covered too (import-linter's forbidden lists name today's packages):
``kubetier.api`` imports nothing else of kubetier; ``kubetier.policy`` imports only
``kubetier.api`` and itself."""

from __future__ import annotations

import ast
from pathlib import Path

import kubetier

ROOT = Path(kubetier.__file__).resolve().parent


def kubetier_imports(package: str) -> dict[str, set[str]]:
    """module file -> the kubetier modules it imports (absolute or relative)."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "kubetier"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: stays inside its own package
                    found.add(f"kubetier.{package}")
                elif node.module and node.module.split(".")[0] == "kubetier":
                    found.add(node.module)
        out[str(path.relative_to(ROOT))] = found
    return out


def test_api_imports_no_other_kubetier_package():
    bad = {
        m: sorted(i for i in imps if not i.startswith("kubetier.api")) for m, imps in kubetier_imports("api").items()
    }
    assert {m: i for m, i in bad.items() if i} == {}


def test_policy_imports_only_api_and_itself():
    allowed = ("kubetier.api", "kubetier.policy")
    bad = {m: sorted(i for i in imps if not i.startswith(allowed)) for m, imps in kubetier_imports("policy").items()}
    assert {m: i for m, i in bad.items() if i} == {}


def test_the_scan_sees_imports():
    # policy.latency imports api.profile: a scan that found nothing would pass vacuously.
    assert "kubetier.api.profile" in kubetier_imports("policy")["policy/latency.py"]
