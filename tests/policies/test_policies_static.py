"""Static checks of the admission policies in policies/: the YAML parses into the
expected kinds, every binding names a policy, and every field a CEL expression reads
under `object.spec` exists in the generated ModelService CRD schema (a misspelt field
would otherwise evaluate to a runtime error only when a user hits it). The e2e suite
(e2e/test_policies.py) runs the same policies on a real API server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
POLICY_FILES = sorted((REPO / "policies").glob("*.yaml"))
MACROS = ("map", "filter", "all", "exists", "exists_one")
EXPECTED_POLICIES = {"kubetier-gpu-cap", "kubetier-tight-tiers", "kubetier-spot-only", "kubetier-required-labels"}


def load_all() -> list[dict]:
    docs = []
    for f in POLICY_FILES:
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def policies() -> list[dict]:
    return [d for d in load_all() if d["kind"] == "ValidatingAdmissionPolicy"]


def modelservice_spec_schema() -> dict:
    from kubetier.api import crdgen

    crd = next(c for c in crdgen.all_crds() if c["spec"]["names"]["kind"] == "ModelService")
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def expressions(policy: dict) -> list[str]:
    spec = policy["spec"]
    out = [c["expression"] for c in spec.get("matchConditions", [])]
    out += [v["expression"] for v in spec.get("variables", [])]
    for v in spec.get("validations", []):
        out.append(v["expression"])
        if "messageExpression" in v:
            out.append(v["messageExpression"])
    return out


def _field_chain(expr: str, start: int) -> list[str]:
    """Identifiers in `.a.b.c` right at `start`, without a trailing method/macro call."""
    m = re.match(r"(?:\.\w+)*", expr[start:])
    parts = m.group(0).split(".")[1:]
    end = start + m.end()
    if parts and end < len(expr) and expr[end] == "(":
        parts = parts[:-1]
    return parts


def spec_references(expr: str) -> set[tuple[str, ...]]:
    """Field paths under spec that `expr` reads, with `[]` for list items bound by a macro."""
    refs: set[tuple[str, ...]] = set()
    bound: dict[str, tuple[str, ...]] = {}
    for m in re.finditer(r"\b(?:object|oldObject)\.spec\b", expr):
        chain = _field_chain(expr, m.end())
        refs.add(tuple(chain))
        after = m.end() + sum(len(c) + 1 for c in chain)
        macro = re.match(r"\.(\w+)\(\s*(\w+)\s*,", expr[after:])
        if macro and macro.group(1) in MACROS:
            bound[macro.group(2)] = (*chain, "[]")
    for var, base in bound.items():
        for m in re.finditer(rf"(?<![\w.]){var}\b", expr):
            chain = _field_chain(expr, m.end())
            if chain:
                refs.add((*base, *chain))
    return refs


def resolve(schema: dict, path: tuple[str, ...]) -> bool:
    node = schema
    for part in path:
        if part == "[]":
            if node.get("type") != "array":
                return False
            node = node["items"]
        else:
            props = node.get("properties") or {}
            if part not in props:
                return False
            node = props[part]
    return True


def test_policy_files_exist():
    names = {p["metadata"]["name"] for p in policies()}
    assert names == EXPECTED_POLICIES, names


def test_kinds_and_api_versions():
    allowed = {
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"),
        ("v1", "ConfigMap"),
        ("v1", "Namespace"),
    }
    for d in load_all():
        assert (d["apiVersion"], d["kind"]) in allowed, (d["apiVersion"], d["kind"], d["metadata"]["name"])


def test_every_policy_has_a_binding_that_denies():
    bindings = {b["spec"]["policyName"]: b for b in load_all() if b["kind"] == "ValidatingAdmissionPolicyBinding"}
    for p in policies():
        name = p["metadata"]["name"]
        assert name in bindings, f"{name} has no binding"
        assert bindings[name]["spec"]["validationActions"] == ["Deny"]
        assert p["spec"]["failurePolicy"] == "Fail"
        if "paramKind" in p["spec"]:
            assert "paramRef" in bindings[name]["spec"], f"{name} takes params but its binding names none"


def test_policies_match_modelservices_only_on_create_and_update():
    for p in policies():
        (rule,) = p["spec"]["matchConstraints"]["resourceRules"]
        assert rule["apiGroups"] == ["kubetier.io"] and rule["resources"] == ["modelservices"]
        assert rule["apiVersions"] == ["v1alpha1"]
        assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]


def test_rejection_messages_name_the_rule():
    for p in policies():
        name = p["metadata"]["name"]
        for v in p["spec"]["validations"]:
            text = v.get("message") or v["messageExpression"]
            assert f"{name}:" in text, f"{name}: message does not start with the rule's name: {text[:80]}"


def test_variables_are_defined_before_use():
    for p in policies():
        defined: list[str] = []
        for v in p["spec"].get("variables", []):
            for used in re.findall(r"variables\.(\w+)", v["expression"]):
                assert used in defined, (
                    f"{p['metadata']['name']}: variable {v['name']} uses {used} before it is defined"
                )
            defined.append(v["name"])
        for expr in expressions(p):
            for used in re.findall(r"variables\.(\w+)", expr):
                assert used in defined, f"{p['metadata']['name']}: undefined variables.{used}"


@pytest.mark.parametrize("policy", policies(), ids=lambda p: p["metadata"]["name"])
def test_cel_reads_only_fields_of_the_crd_schema(policy):
    schema = modelservice_spec_schema()
    refs = set().union(*(spec_references(e) for e in expressions(policy)))
    if policy["metadata"]["name"] != "kubetier-required-labels":
        assert any(r and r[0] == "tiers" for r in refs), "the reference extractor found nothing: is it broken?"
    for ref in refs:
        assert resolve(schema, ref), (
            f"{policy['metadata']['name']}: spec.{'.'.join(ref)} is not in the ModelService CRD schema"
        )


def test_reference_checker_catches_a_misspelt_field():
    schema = modelservice_spec_schema()
    refs = spec_references("object.spec.tiers.all(t, has(t.capacity) && t.capacity.spotPolicy != 'never')")
    assert ("tiers", "[]", "capacity", "spotPolicy") in refs
    assert not resolve(schema, ("tiers", "[]", "capacity", "spotPolicy"))
    assert resolve(schema, ("tiers", "[]", "capacity", "spot"))
    assert spec_references("object.spec.resources.gpusPerReplica * 2") == {("resources", "gpusPerReplica")}
