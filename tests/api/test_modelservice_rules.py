"""Cross-field rules, built from a small valid object so each test changes one thing."""

from __future__ import annotations

import copy

import pytest

from kubetier.api import InvalidObject, admit


def ms(**spec_overrides):
    obj = {
        "apiVersion": "kubetier.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {
            "model": {"name": "m", "source": "hf://org/m"},
            "tiers": [
                {"name": "fast", "ttftMs": 200, "tpotMs": 20},
                {"name": "slow", "ttftMs": 2000, "tpotMs": 100},
            ],
        },
    }
    obj["spec"].update(copy.deepcopy(spec_overrides))
    return obj


def refused(obj) -> str:
    with pytest.raises(InvalidObject) as err:
        admit(obj)
    return str(err.value)


def test_minimal_object_gets_schema_defaults():
    parsed = admit(ms())
    fast = parsed.spec.tiers[0]
    assert (fast.replicas.min, fast.replicas.max) == (1, 4)
    assert fast.capacity.spot == "never" and fast.prewarm.standby == 0
    assert parsed.spec.engine.kind == "vllm" and parsed.spec.resources.gpus_per_replica == 1


def test_exactly_one_profile_source():
    assert "exactly one of builtin" in refused(ms(latencyProfile={}))
    inline_and_builtin = {"builtin": "x", "inline": {"name": "p"}}
    assert "latencyProfile" in refused(ms(latencyProfile=inline_and_builtin))


def test_access_rule_must_name_existing_tiers():
    ok = admit(ms(access=[{"secretRef": {"name": "k"}, "tiers": ["slow"]}]))
    assert ok.spec.access[0].tiers == ["slow"]
    assert "access[].tiers" in refused(ms(access=[{"secretRef": {"name": "k"}, "tiers": ["gold"]}]))


def test_too_many_tiers_is_a_bounded_list():
    tiers = [{"name": f"t{i}", "ttftMs": 100, "tpotMs": 10 + i} for i in range(9)]
    assert "spec.tiers: Too many" in refused(ms(tiers=tiers))


def test_scale_to_zero_allows_min_zero():
    tiers = [
        {
            "name": "only",
            "ttftMs": 100,
            "tpotMs": 10,
            "replicas": {"min": 0, "max": 2},
            "prewarm": {"scaleToZero": True},
        }
    ]
    assert admit(ms(tiers=tiers)).spec.tiers[0].replicas.min == 0


def test_unknown_fields_are_reported_with_their_path():
    assert 'spec.tiers[0].tpot: unknown field "tpot"' in refused(
        ms(tiers=[{"name": "x", "ttftMs": 1, "tpotMs": 1, "tpot": 3}])
    )


def test_wire_round_trip_is_camel_case():
    wire = admit(ms()).wire()
    assert wire["spec"]["tiers"][0]["ttftMs"] == 200 and "ttft_ms" not in wire["spec"]["tiers"][0]
    assert admit(wire).wire() == wire
