"""GitOps behaviour: what Argo CD or Flux see when they sync the samples.

Each valid sample is applied with server-side apply (as Argo CD's ServerSideApply=true
and Flux do) twice: the second pass changes nothing (same resourceVersion). After the
operator has reconciled it (status.observedGeneration caught up), the spec is still the
applier's alone: generation unchanged, no spec field owned by another manager, and a
server-side dry-run apply of the same YAML would store the same spec (no drift for the
GitOps tool to report).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from e2e_support import REPO, Kubectl, wait_until

SAMPLES = sorted((REPO / "crds" / "samples").glob("modelservice-*.yaml"))
MANAGER = "gitops-e2e"


def in_namespace(path: Path, namespace: str) -> tuple[str, dict]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    doc["metadata"]["namespace"] = namespace
    return yaml.safe_dump(doc), doc


def ssa(kubectl: Kubectl, text: str) -> None:
    kubectl("apply", "--server-side", f"--field-manager={MANAGER}", "-f", "-", input=text)


def get(kubectl: Kubectl, namespace: str, name: str) -> dict:
    return kubectl.json("get", "modelservice", name, "-n", namespace, "--show-managed-fields")


def spec_owners(obj: dict) -> set[str]:
    """Field managers that own any field under spec."""
    return {m["manager"] for m in obj["metadata"].get("managedFields", []) if "f:spec" in (m.get("fieldsV1") or {})}


def test_samples_exist():
    assert len(SAMPLES) >= 2, SAMPLES


def applier_entry(obj: dict) -> dict:
    """The applier's managedFields entry: its fields and the time of its last real change
    (a no-op apply leaves both as they were, whatever the operator writes meanwhile)."""
    (entry,) = [m for m in obj["metadata"].get("managedFields", []) if m["manager"] == MANAGER]
    return entry


def assert_no_drift(kubectl: Kubectl, text: str, namespace: str, name: str, when: str) -> None:
    """What a GitOps tool's server-side diff computes: the object a re-apply would store.
    Its spec and generation must equal the live ones. (`kubectl diff` itself also shows
    the status the operator writes between its two reads, so it is not usable here.)"""
    would = json.loads(
        kubectl(
            "apply",
            "--server-side",
            f"--field-manager={MANAGER}",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
            input=text,
        )
    )
    live = get(kubectl, namespace, name)
    assert would["metadata"]["generation"] == live["metadata"]["generation"], f"{when}: a re-apply would change spec"
    assert would["spec"] == live["spec"], f"{when}: a re-apply would change spec"
    assert would["metadata"].get("labels") == live["metadata"].get("labels"), f"{when}: labels drift"


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_apply_twice_is_a_no_op_and_reconcile_leaves_no_drift(
    kubectl: Kubectl, crds, operator, namespace: str, sample: Path
):
    text, doc = in_namespace(sample, namespace)
    name = doc["metadata"]["name"]
    ssa(kubectl, text)
    first = get(kubectl, namespace, name)
    assert_no_drift(kubectl, text, namespace, name, "before the second apply")
    ssa(kubectl, text)
    second = get(kubectl, namespace, name)
    assert second["metadata"]["generation"] == 1
    assert applier_entry(second) == applier_entry(first), "the second apply changed the applier's fields"

    reconciled = wait_until(
        lambda: (o := get(kubectl, namespace, name)) and (o.get("status") or {}).get("observedGeneration") == 1 and o,
        f"the operator to reconcile {name} (status.observedGeneration = 1)",
        timeout=90,
        describe=lambda: f"{get(kubectl, namespace, name).get('status')}\n{operator.log_tail()}",
    )
    assert reconciled["metadata"]["generation"] == 1, "something wrote spec after the GitOps apply"
    assert spec_owners(reconciled) == {MANAGER}, f"spec fields owned by {spec_owners(reconciled)}"
    conditions = {c["type"]: c for c in reconciled["status"].get("conditions", [])}
    assert "Ready" in conditions and conditions["Ready"]["observedGeneration"] == 1, conditions

    assert_no_drift(kubectl, text, namespace, name, "after reconcile")
    ssa(kubectl, text)
    after = get(kubectl, namespace, name)
    assert after["metadata"]["generation"] == 1
    assert applier_entry(after) == applier_entry(first), "re-applying after reconcile changed the applier's fields"


def test_defaults_live_in_the_schema(kubectl: Kubectl, crds, namespace: str):
    """A minimal ModelService comes back from the API server with every default filled in,
    so what the operator reads equals what a GitOps diff compares against."""
    minimal = {
        "apiVersion": "kubetier.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "minimal", "namespace": namespace},
        "spec": {
            "model": {"name": "m", "source": "hf://org/m"},
            "tiers": [{"name": "batch", "ttftMs": 5000, "tpotMs": 150}],
        },
    }
    res = kubectl.run("create", "--dry-run=server", "-o", "json", "-f", "-", input=yaml.safe_dump(minimal))
    assert res.returncode == 0, res.stderr
    spec = json.loads(res.stdout)["spec"]
    t = spec["tiers"][0]
    assert spec["engine"]["kind"] and spec["resources"]["gpusPerReplica"] >= 0
    assert {"replicas", "capacity", "prewarm", "priority", "onLate", "attainmentPercent"} <= set(t), t
    assert t["capacity"]["spot"] == "never"
