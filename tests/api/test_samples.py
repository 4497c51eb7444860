"""crds/samples: valid objects admit; invalid ones are refused with the message their
`# expect:` line names (the same files are applied to a real apiserver in e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetier.api import InvalidObject, ModelService, admit

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"
VALID = sorted(SAMPLES.glob("*.yaml"))
INVALID = sorted((SAMPLES / "invalid").glob("*.yaml"))


def test_there_are_enough_samples():
    assert (SAMPLES / "modelservice-three-tier.yaml") in VALID
    assert len(VALID) >= 3 and len(INVALID) >= 6


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_sample_admits(path):
    obj = admit(yaml.safe_load(path.read_text()))
    assert obj.metadata["name"]


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_sample_is_refused_naming_the_field(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be `# expect: <message>`"
    expect = first.removeprefix("# expect: ")
    with pytest.raises(InvalidObject) as err:
        admit(yaml.safe_load(path.read_text()))
    assert expect in str(err.value)


def test_three_tier_sample_after_defaulting():
    ms = admit(yaml.safe_load((SAMPLES / "modelservice-three-tier.yaml").read_text()))
    assert isinstance(ms, ModelService)
    tiers = {t.name: t for t in ms.spec.tiers}
    assert [t.tpot_ms for t in ms.spec.tiers] == [30, 60, 150]
    assert tiers["interactive"].capacity.spot == "never"
    assert tiers["standard"].capacity.spot == "allowed" and tiers["standard"].capacity.on_demand_floor == 1
    assert tiers["batch"].capacity.spot == "preferred"
    assert tiers["batch"].on_late == "queue" and tiers["interactive"].on_late == "reject"  # default
    assert ms.spec.engine.port == 8000 and ms.spec.latency_profile.builtin == "llama-3.1-8b-h100"


def test_inline_profile_sample_passes_the_latency_models_own_checks():
    from kubetier.policy.latency import LatencyModel

    ms = admit(yaml.safe_load((SAMPLES / "modelservice-inline-profile.yaml").read_text()))
    model = LatencyModel.from_dict(ms.spec.latency_profile.inline.wire())
    assert model.kv_capacity_tokens > 0


def test_every_cel_rule_has_an_invalid_sample():
    """Each CEL rule is exercised by an invalid sample (e2e applies them to a real
    apiserver), and its pydantic twin refuses that sample with the same message."""
    from kubetier.api.crdgen import all_crds

    def messages(node):
        for rule in node.get("x-kubernetes-validations", ()):
            yield rule["message"]
        for sub in node.get("properties", {}).values():
            yield from messages(sub)
        if "items" in node:
            yield from messages(node["items"])

    expects = [p.read_text().splitlines()[0].removeprefix("# expect: ") for p in INVALID]
    for crd in all_crds():
        for message in messages(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            assert any(e in message for e in expects), f"no invalid sample exercises CEL rule {message!r}"


def test_readme_modelservice_admits():
    # The first thing a reader copies: it must be a valid object, not just an illustration.
    readme = (SAMPLES.parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:]]
    docs = [yaml.safe_load(b) for b in blocks if "kind: ModelService" in b]
    assert docs, "README.md has no ModelService example"
    for doc in docs:
        doc["metadata"].setdefault("namespace", "default")
        assert isinstance(admit(doc), ModelService)
