"""(a) The generated CRDs on a real apiserver: every valid sample is accepted, every
invalid sample is rejected with the message its `# expect:` line names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from e2e_support import REPO, Kubectl

SAMPLES = REPO / "crds" / "samples"
VALID = sorted(SAMPLES.glob("*.yaml"))
INVALID = sorted((SAMPLES / "invalid").glob("*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    assert first.startswith("# expect:"), f"{path.name}: first line must be `# expect: <message substring>`"
    expect = first.split(":", 1)[1].strip()
    assert expect, f"{path.name}: `# expect:` is empty"
    return expect


def in_namespace(path: Path, namespace: str) -> str:
    """The sample's objects, namespaced ones moved into the test namespace."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for d in docs:
        if d.get("kind") != "PowerBudget":  # cluster-scoped
            d.setdefault("metadata", {})["namespace"] = namespace
    return yaml.safe_dump_all(docs)


def test_samples_exist():
    assert VALID, "crds/samples/*.yaml: no valid samples"
    assert INVALID, "crds/samples/invalid/*.yaml: no invalid samples"


def test_crds_are_established_and_served(kubectl: Kubectl, crds):
    resources = kubectl("api-resources", "--api-group=kubetier.io", "-o", "name")
    assert "modelservices.kubetier.io" in resources
    assert "ms" in kubectl("api-resources", "--api-group=kubetier.io")


@pytest.mark.parametrize("sample", VALID, ids=[p.name for p in VALID])
def test_valid_sample_is_accepted(kubectl: Kubectl, crds, namespace: str, sample: Path):
    res = kubectl.run("apply", "--dry-run=server", "-f", "-", input=in_namespace(sample, namespace))
    assert res.returncode == 0, f"{sample.name} was rejected:\n{res.stderr}"


@pytest.mark.parametrize("sample", INVALID, ids=[p.name for p in INVALID])
def test_invalid_sample_is_rejected_with_its_message(kubectl: Kubectl, crds, namespace: str, sample: Path):
    expect = expected_message(sample)
    res = kubectl.run("create", "--dry-run=server", "-f", "-", input=in_namespace(sample, namespace))
    assert res.returncode != 0, f"{sample.name} was ACCEPTED by the apiserver; expected rejection with {expect!r}"
    assert expect in res.stderr, f"{sample.name}: rejection does not mention {expect!r}:\n{res.stderr}"
