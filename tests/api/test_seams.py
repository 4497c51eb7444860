"""Every shape two parts of kubetier exchange has one pydantic definition in
``kubetier.api``: build it on one side, parse it on the other, and get the same thing
back (model -> JSON -> model); invalid input is refused with the field named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kubetier.api import labels
from kubetier.api.errors import describe
from kubetier.api.modelservice import ModelService, Tier
from kubetier.api.profile import LatencyProfile
from kubetier.api.router_status import ModelStatus, RouterStatus, ServerState, TierCounts
from kubetier.api.routing import ROUTING_KEY, RoutingDocument
from kubetier.api.tier import SLOTier
from kubetier.operator.modelservice.desired import desired, routing_document
from kubetier.operator.modelservice.model import Observed
from kubetier.operator.modelservice.router_feed import attainment_from_status
from kubetier.policy.latency import LatencyModel, ProfileError, list_profiles, load_profile
from kubetier.policy.routing import TierSLO
from kubetier.router.config import RouterConfigFile, parse_config
from kubetier.router.discovery import POD_SELECTOR, ROUTING_LABEL, build_config
from kubetier.router.metrics import TierTally
from kubetier.sim.scenario import Scenario, load_scenario, shipped_scenarios

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"


def sample(name: str) -> ModelService:
    return ModelService.model_validate(yaml.safe_load((SAMPLES / f"{name}.yaml").read_text()))


def errors_of(model: type, data: object) -> str:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)  # type: ignore[attr-defined]
    return "; ".join(describe(e.value))


# --------------------------------------------------------------------------- SLO tier

TIER = {"name": "interactive", "ttftMs": 300, "tpotMs": 30, "priority": 100, "onLate": "queue"}


def test_slo_tier_round_trips_through_json():
    tier = SLOTier.model_validate(TIER)
    assert SLOTier.model_validate_json(json.dumps(tier.wire())) == tier
    assert tier.wire() == {**TIER, "attainmentPercent": 90.0, "meanOutputTokens": 256}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"tpotMs": 0}, "tpotMs"),
        ({"ttftMs": 0.5}, "ttftMs"),
        ({"onLate": "drop"}, "onLate"),
        ({"name": "Gold_Tier"}, "name"),
        ({"onlate": "queue"}, "onlate: unknown field"),
        ({"attainmentPercent": 101}, "attainmentPercent"),
    ],
)
def test_slo_tier_refuses_bad_input_naming_the_field(change, field):
    assert field in errors_of(SLOTier, {**TIER, **change})


def test_every_tier_representation_is_the_same_definition():
    ms = sample("modelservice-three-tier")
    for tier in ms.spec.tiers:
        assert isinstance(tier, SLOTier)  # the CRD's Tier extends it
        slo = tier.as_slo_tier()
        assert type(slo) is SLOTier and slo.wire().items() <= tier.wire().items()
        fast = TierSLO.from_api(tier)
        assert (fast.name, fast.ttft_ms, fast.tpot_ms, fast.priority, fast.mean_output_tokens, fast.on_late) == (
            tier.name,
            tier.ttft_ms,
            tier.tpot_ms,
            tier.priority,
            tier.mean_output_tokens,
            tier.on_late,
        )
    # The simulator's scenario tiers are the same type.
    assert Scenario.model_fields["tiers"].annotation == list[SLOTier]
    for name in shipped_scenarios():
        assert all(type(t) is SLOTier for t in load_scenario(name).tiers)
    # A ModelService tier block pastes into a scenario (SLO fields only) and vice versa.
    block = ms.spec.tiers[0].as_slo_tier().wire()
    assert Tier.model_validate(block).as_slo_tier() == SLOTier.model_validate(block)


# --------------------------------------------------------------------------- latency profile


@pytest.mark.parametrize("name", list_profiles())
def test_every_builtin_profile_round_trips(name):
    model = load_profile(name)
    api = model.to_api()
    again = LatencyProfile.model_validate_json(json.dumps(api.wire()))
    assert again == api
    assert LatencyModel.from_api(again) == model
    assert LatencyModel.from_dict(again.wire()).decode_iteration_s(7, 1000) == model.decode_iteration_s(7, 1000)


def test_inline_profile_in_a_modelservice_is_the_same_model():
    ms = sample("modelservice-inline-profile")
    inline = ms.spec.latency_profile.inline
    assert isinstance(inline, LatencyProfile)
    assert LatencyModel.from_dict(inline.wire()).name == inline.name


def test_an_inconsistent_inline_profile_is_refused_naming_the_field():
    body = yaml.safe_load((SAMPLES / "modelservice-inline-profile.yaml").read_text())
    body["spec"]["latencyProfile"]["inline"]["prefill"]["tokens"].reverse()
    message = errors_of(ModelService, body)
    assert "spec.latencyProfile.inline: prefill.tokens[1]: must be strictly increasing" in message


def test_profile_consistency_is_checked_by_the_one_model():
    bad = load_profile("llama-3.1-8b-h100").to_dict()
    bad["decode"]["batchSizes"][1] = 1  # not strictly increasing
    assert "decode.batchSizes[1]: must be strictly increasing" in errors_of(LatencyProfile, bad)
    with pytest.raises(ProfileError, match=r"decode\.batchSizes\[1\]"):
        LatencyModel.from_dict(bad)


# --------------------------------------------------------------------------- routing document


def test_routing_document_built_by_the_operator_is_what_the_router_routes_by():
    ms = sample("modelservice-three-tier").model_copy(update={"metadata": {"name": "llama-8b", "namespace": "ns"}})
    objects = desired(ms, Observed())
    cm = next(o for o in objects if o["kind"] == "ConfigMap")
    # The ConfigMap carries the label the router selects on.
    key, _, value = ROUTING_LABEL.partition("=")
    assert cm["metadata"]["labels"][key] == value
    doc = RoutingDocument.from_json(cm["data"][ROUTING_KEY])
    assert doc == routing_document(ms, load_profile("llama-3.1-8b-h100").to_dict())
    assert RoutingDocument.from_json(doc.to_json()) == doc  # model -> JSON -> model
    # The router's discovery parses the same document into its policy structs.
    pods = [o for o in objects if o["kind"] == "Deployment" and "standby" not in o["metadata"]["name"]]
    pod = {
        "metadata": {"name": "p0", "namespace": "ns", "labels": pods[0]["spec"]["template"]["metadata"]["labels"]},
        "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    config = build_config([cm], [pod], {})
    spec = config.models[ms.spec.model.name]
    assert spec.tiers == [TierSLO.from_api(t) for t in ms.spec.tiers]
    assert spec.profile == load_profile("llama-3.1-8b-h100")
    assert [(s.host, s.port, s.tier) for s in spec.servers] == [
        ("10.1.2.3", ms.spec.engine.port, pods[0]["spec"]["template"]["metadata"]["labels"][labels.TIER_LABEL])
    ]


def test_rendered_serving_pods_match_the_routers_pod_selector():
    ms = sample("modelservice-three-tier").model_copy(update={"metadata": {"name": "llama-8b", "namespace": "ns"}})
    wanted = dict(term.split("=") for term in POD_SELECTOR.split(","))
    for obj in desired(ms, Observed()):
        if obj["kind"] != "Deployment":
            continue
        pod_labels = obj["spec"]["template"]["metadata"]["labels"]
        matches = all(pod_labels.get(k) == v for k, v in wanted.items())
        assert matches == (pod_labels[labels.ROLE_LABEL] == labels.ROLE_SERVING), obj["metadata"]["name"]


def test_invalid_routing_document_is_skipped_with_the_field_named(caplog):
    doc = json.loads(
        routing_document(sample("modelservice-three-tier"), load_profile("llama-3.1-8b-h100").to_dict()).to_json()
    )
    doc["tiers"][1]["tpotMs"] = -5
    cm = {"metadata": {"name": "x-routing", "namespace": "ns"}, "data": {ROUTING_KEY: json.dumps(doc)}}
    with caplog.at_level(logging.WARNING, logger="kubetier.router.discovery"):
        assert build_config([cm], [], {}).models == {}
    assert "tiers[1].tpotMs" in caplog.text


def test_routing_document_ignores_fields_a_newer_operator_adds():
    doc = json.loads(
        routing_document(sample("modelservice-three-tier"), load_profile("llama-3.1-8b-h100").to_dict()).to_json()
    )
    doc["newField"] = {"x": 1}
    doc["tiers"][0]["newTierField"] = True
    assert RoutingDocument.model_validate(doc).tiers[0].name == doc["tiers"][0]["name"]


# --------------------------------------------------------------------------- router status document


def test_router_status_document_round_trips_and_the_operator_reads_it():
    tally = TierTally(requests=12, completed=10, slo_met=9, rejected=2, failed=0, inflight=1)
    doc = RouterStatus(
        worker="w1",
        models={
            "llama": ModelStatus(
                tiers={"interactive": tally.counts()},
                servers=[ServerState(id="ns/p0", tier="interactive", endpoint="10.0.0.1:8000", ready=True)],
                queue_length=0,
            )
        },
    )
    wire = json.loads(json.dumps(doc.document()))
    assert RouterStatus.model_validate(wire) == doc
    assert wire["models"]["llama"]["tiers"]["interactive"]["attainmentPercent"] == 75.0  # 9 / (10 + 2)
    assert wire["models"]["llama"]["servers"][0]["kvTokens"] == 0
    assert attainment_from_status(wire, "llama") == {"interactive": 75.0}
    # Unset values are sent as null, not left out.
    assert TierCounts().document()["attainmentPercent"] is None


def test_router_status_refuses_nonsense_naming_the_field():
    assert "models.m.tiers.t.completed" in errors_of(
        RouterStatus, {"models": {"m": {"tiers": {"t": {"completed": -1}}}}}
    )
    assert TierCounts.model_validate({"completed": 1, "futureField": 3}).completed == 1


# --------------------------------------------------------------------------- router config file


def test_router_config_file_round_trips_and_uses_the_api_tier():
    data = {
        "routing": {"kind": "slo", "scaleUpSeconds": 5},
        "models": [
            {
                "name": "m",
                "profile": "llama-3.1-8b-h100",
                "tiers": [TIER, {"name": "batch", "ttftMs": 5000, "tpotMs": 150}],
                "servers": [{"url": "http://127.0.0.1:9001", "tier": "interactive"}],
            }
        ],
        "apiKeys": [{"key": "k", "tiers": ["batch"]}],
    }
    file = RouterConfigFile.model_validate(data)
    assert RouterConfigFile.model_validate_json(file.model_dump_json(by_alias=True)) == file
    assert all(type(t) is SLOTier for t in file.models[0].tiers)
    config = parse_config(data)
    assert config.models["m"].tiers[0] == TierSLO.from_api(SLOTier.model_validate(TIER))
    assert config.scale_up_s == 5.0 and config.keys == {"k": {"*": frozenset({"batch"})}}


# --------------------------------------------------------------------------- labels


def test_label_keys_are_defined_once():
    import kubetier.demo
    import kubetier.localdev.engines
    import kubetier.operator.modelservice.model
    import kubetier.router.discovery

    assert kubetier.operator.modelservice.model.SERVICE_LABEL is labels.SERVICE_LABEL
    assert kubetier.operator.modelservice.model.MANAGED_BY is labels.MANAGED_BY_LABEL
    assert kubetier.router.discovery.LOCAL_ENDPOINT is labels.LOCAL_ENDPOINT_ANNOTATION
    assert kubetier.localdev.engines.LOCAL_ENDPOINT_ANNOTATION is labels.LOCAL_ENDPOINT_ANNOTATION
    # No module outside kubetier.api spells a kubetier.io/ label key itself.
    root = Path(kubetier.operator.modelservice.model.__file__).resolve().parents[2]
    offenders = []
    for path in root.rglob("*.py"):
        if path.parent.name == "api":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if any(
                f'"{key}' in code for key in ("kubetier.io/", "app.kubernetes.io/", "karpenter.sh/", "nvidia.com/gpu")
            ):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_router_config_example_in_its_docstring_parses(monkeypatch):
    import kubetier.router.config as config_module

    doc = config_module.__doc__ or ""
    example = doc[doc.index("FILE (YAML)::") + len("FILE (YAML)::") : doc.index("Errors name")]
    monkeypatch.setenv("TEAM_B_KEY", "sk-team-b")
    config = parse_config(yaml.safe_load(example))
    assert [t.name for t in config.models["llama-3.1-8b"].tiers] == ["interactive", "batch"]
    assert config.keys["sk-team-b"] == {"llama-3.1-8b": frozenset({"batch"})}


def test_the_status_the_operator_writes_is_the_apis_status_shape():
    import datetime as dt

    from kubetier.api.modelservice import ModelServiceStatus
    from kubetier.operator.modelservice.status import compute_status

    ms = sample("modelservice-three-tier").model_copy(update={"metadata": {"name": "llama-8b", "namespace": "ns"}})
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for attainment in ({}, {"interactive": 97.5, "standard": 80.0}):
        status = compute_status(ms, Observed(attainment=attainment), now)
        parsed = ModelServiceStatus.model_validate(status)
        assert ModelServiceStatus.model_validate_json(json.dumps(parsed.wire())) == parsed
        assert [t.attainment_percent for t in parsed.tiers][:2] == [
            attainment.get("interactive"),
            attainment.get("standard"),
        ]
