"""The Argo CD health-check Lua for ModelService, read from docs/argocd-health.md and
run in a real Lua interpreter (lupa) against the status shapes the operator writes."""

from __future__ import annotations

import re

import pytest
import yaml
from chart_support import REPO

DOC = REPO / "docs" / "argocd-health.md"
KEY = "resource.customizations.health.kubetier.io_ModelService"


def health_lua() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    for b in blocks:
        data = (yaml.safe_load(b) or {}).get("data") or {}
        if KEY in data:
            return data[KEY]
    raise AssertionError(f"{DOC.name} has no yaml block with data.{KEY}")


def health(obj: dict) -> tuple[str, str]:
    lupa = pytest.importorskip("lupa", reason="lupa is a dev dependency: run `make install`")
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval(f"function(obj)\n{health_lua()}\nend")
    hs = check(lua.table_from(obj, recursive=True))
    return hs["status"], hs["message"]


def cond(ctype: str, status: str, reason: str = "R", message: str = "m", generation: int = 2) -> dict:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-11-23T15:00:00Z",
    }


def ms(generation: int = 2, status: dict | None = None) -> dict:
    obj = {
        "apiVersion": "kubetier.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "llama-8b", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def health_with(*conditions: dict) -> tuple[str, str]:
    """The health of a ModelService whose status is current (generation 2) with ``conditions``."""
    return health(ms(status={"observedGeneration": 2, "conditions": list(conditions)}))


def test_no_status_is_progressing():
    assert health(ms(status=None))[0] == "Progressing"
    assert health(ms(status={}))[0] == "Progressing"


def test_stale_generation_is_progressing_even_if_ready():
    status, message = health(ms(generation=3, status={"observedGeneration": 2, "conditions": [cond("Ready", "True")]}))
    assert status == "Progressing" and "generation 3" in message


def test_ready_is_healthy():
    status, message = health_with(
        cond("Ready", "True", "AllTiersReady", "3 tiers ready"),
        cond("Degraded", "False"),
        cond("SLOAtRisk", "Unknown"),
    )
    assert (status, message) == ("Healthy", "3 tiers ready")


def test_slo_at_risk_stays_healthy_with_a_message():
    status, message = health_with(
        cond("Ready", "True"),
        cond("SLOAtRisk", "True", "AttainmentLow", "interactive at 71% < 95%"),
    )
    assert status == "Healthy" and "interactive at 71%" in message


def test_degraded_wins():
    status, message = health_with(
        cond("Ready", "False"),
        cond("Degraded", "True", "InsufficientGPUs", "needs 16 NVIDIA-H100, 8 schedulable"),
    )
    assert status == "Degraded" and message == "InsufficientGPUs: needs 16 NVIDIA-H100, 8 schedulable"


def test_not_ready_is_progressing():
    status, message = health_with(
        cond("Ready", "False", "TiersNotReady", "batch: 1/3 ready"),
        cond("Progressing", "True"),
    )
    assert (status, message) == ("Progressing", "TiersNotReady: batch: 1/3 ready")
