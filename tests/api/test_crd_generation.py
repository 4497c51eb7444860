"""The CRDs are generated from the pydantic models: committed YAML == generated, and
the generated schemas are structural with the rules the apiserver needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetier.api import crdgen

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("crd", crdgen.all_crds(), ids=lambda c: c["metadata"]["name"])
def test_committed_crd_matches_models(crd):
    committed = REPO / "crds" / crdgen.file_name(crd)
    assert committed.exists(), f"{committed} missing: run `make generate`"
    assert committed.read_text() == crdgen.render(crd), f"{committed} drifted from kubetier.api: run `make generate`"


def test_write_and_stdout_agree(tmp_path, capsys):
    assert crdgen.main(["--write", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["modelservices.kubetier.io.yaml", "powerbudgets.kubetier.io.yaml"]
    assert crdgen.main([]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in docs] == ["modelservices.kubetier.io", "powerbudgets.kubetier.io"]


def _walk(node, path="$"):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("crd", crdgen.all_crds(), ids=lambda c: c["metadata"]["name"])
def test_schema_is_structural(crd):
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "allOf" not in node and "title" not in node, path
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def _ms_schema():
    return crdgen.modelservice_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_cel_rules_sit_on_lists_bounded_for_cost():
    """The apiserver refuses CEL rules whose estimated cost is unbounded: every list and
    string a rule walks needs maxItems / maxLength."""
    spec = _ms_schema()["properties"]["spec"]
    tiers = spec["properties"]["tiers"]
    assert tiers["maxItems"] <= 16 and tiers["items"]["properties"]["name"]["maxLength"] <= 63
    access = spec["properties"]["access"]
    assert access["maxItems"] and access["items"]["properties"]["tiers"]["maxItems"]
    assert access["items"]["properties"]["tiers"]["items"]["maxLength"]
    rules = {r["message"]: r["rule"] for r in spec["x-kubernetes-validations"]}
    assert any("unique" in m for m in rules) and any("tpotMs" in m for m in rules)
    for path, node in _walk(_ms_schema()):
        for rule in node.get("x-kubernetes-validations", ()):
            assert rule["message"].strip(), path


def test_defaults_live_in_the_schema():
    spec = _ms_schema()["properties"]["spec"]["properties"]
    tier = spec["tiers"]["items"]["properties"]
    assert spec["engine"]["default"]["kind"] == "vllm" and spec["engine"]["properties"]["kind"]["default"] == "vllm"
    assert spec["latencyProfile"]["default"] == {"builtin": "llama-3.1-8b-h100"}
    assert tier["capacity"]["default"] == {
        "spot": "never",
        "onDemandFloor": 0,
        "overProvision": 0,
        "zoneSpread": "preferred",
        "zoneMaxSkew": 1,
    }
    assert tier["capacity"]["properties"]["spot"]["default"] == "never"
    # a defaulted object with a CEL rule must satisfy it (the apiserver checks defaults)
    assert tier["replicas"]["default"] == {"min": 1, "max": 4}
    assert tier["capacity"]["properties"]["spot"]["enum"] == ["never", "allowed", "preferred"]
    assert tier["onLate"]["enum"] == ["reject", "queue"]
    assert tier["ttftMs"]["minimum"] == 0 and tier["ttftMs"]["exclusiveMinimum"] is True


def test_modelservice_crd_shape():
    crd = crdgen.modelservice_crd()
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["ms"] and crd["spec"]["scope"] == "Namespaced"
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert {"Tiers", "Ready", "Attainment", "Age"} <= set(columns)
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert crdgen.powerbudget_crd()["spec"]["scope"] == "Cluster"


def test_write_to_a_file_path_is_a_clear_error(tmp_path, capsys):
    from kubetier.api import crdgen

    target = tmp_path / "not-a-dir"
    target.write_text("x")
    assert crdgen.main(["--write", str(target)]) == 1
    assert "is not a directory" in capsys.readouterr().err
