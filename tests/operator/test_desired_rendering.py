"""desired(): semantic assertions on what a ModelService renders into."""

from __future__ import annotations

import json

import pytest
import yaml
from modelservice_builders import parse, sample_body

from kubetier.operator.modelservice.desired import desired
from kubetier.operator.modelservice.model import Observed, OperatorConfig
from kubetier.operator.modelservice.profile import Unsatisfiable
from kubetier.policy.latency import load_profile

SERVICE, TIER, ROLE = "kubetier.io/service", "kubetier.io/tier", "kubetier.io/role"


def render(body=None, observed=None, replicas=None, config=None):
    objs = desired(parse(body or sample_body()), observed or Observed(), config or OperatorConfig(), replicas)
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def pod(deploy):
    return deploy["spec"]["template"]["spec"]


def required_terms(deploy):
    aff = pod(deploy)["affinity"]["nodeAffinity"]
    [term] = aff["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return {e["key"]: e["values"] for e in term["matchExpressions"]}


def preferred_spot_weight(deploy):
    prefs = pod(deploy)["affinity"]["nodeAffinity"].get("preferredDuringSchedulingIgnoredDuringExecution", [])
    return sum(
        p["weight"]
        for p in prefs
        if {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}
        in p["preference"]["matchExpressions"]
    )


def test_three_tier_sample_renders_every_child():
    objs = render()
    assert set(objs) == {
        ("ConfigMap", "llama-8b-routing"),
        ("Deployment", "llama-8b-interactive"),
        ("Deployment", "llama-8b-interactive-standby"),
        ("Deployment", "llama-8b-standard-floor"),
        ("Deployment", "llama-8b-standard"),
        ("Deployment", "llama-8b-batch"),
        *(
            (k, f"llama-8b-{t}")
            for k in ("Service", "PodDisruptionBudget")
            for t in ("interactive", "standard", "batch")
        ),
    }


def test_every_child_is_owned_and_labelled():
    for (kind, name), obj in render().items():
        meta = obj["metadata"]
        [owner] = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "kubetier.io/v1alpha1",
            "kind": "ModelService",
            "name": "llama-8b",
            "uid": "uid-1234",
            "controller": True,
            "blockOwnerDeletion": True,
        }, name
        assert meta["namespace"] == "default"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubetier"
        assert meta["labels"][SERVICE] == "llama-8b"
        if kind != "ConfigMap":
            assert meta["labels"][TIER] in name and meta["labels"][ROLE] in ("serving", "standby")


def test_gpu_requests_and_tolerations():
    for (kind, _name), obj in render().items():
        if kind != "Deployment":
            continue
        [c] = pod(obj)["containers"]
        assert c["resources"]["requests"]["nvidia.com/gpu"] == "1" == c["resources"]["limits"]["nvidia.com/gpu"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod(obj)["tolerations"]
        assert required_terms(obj)["nvidia.com/gpu.product"] == ["NVIDIA-H100-80GB-HBM3"]


def required_capacity(deploy, label="karpenter.sh/capacity-type"):
    """The required capacity-type requirement (operator, values), or None."""
    aff = pod(deploy).get("affinity", {}).get("nodeAffinity", {})
    terms = aff.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
    for term in terms:
        for e in term["matchExpressions"]:
            if e["key"] == label:
                return e["operator"], e["values"]
    return None


def test_capacity_type_affinity_follows_the_spot_policy():
    objs = render()
    interactive = objs[("Deployment", "llama-8b-interactive")]
    # on-demand is "not spot": nodes without any capacity label qualify too
    assert required_capacity(interactive) == ("NotIn", ["spot"])
    assert preferred_spot_weight(interactive) == 0
    assert all(t["key"] != "karpenter.sh/capacity-type" for t in pod(interactive)["tolerations"])
    # allowed: the on-demand floor is its own Deployment; the rest may go either way
    floor, rest = objs[("Deployment", "llama-8b-standard-floor")], objs[("Deployment", "llama-8b-standard")]
    assert floor["spec"]["replicas"] == 1 and rest["spec"]["replicas"] == 1  # min 2 = floor 1 + 1
    assert required_capacity(floor) == ("NotIn", ["spot"])
    assert required_capacity(rest) is None
    assert preferred_spot_weight(rest) == 0
    assert {"key": "karpenter.sh/capacity-type", "operator": "Equal", "value": "spot", "effect": "NoSchedule"} in pod(
        rest
    )["tolerations"]
    # preferred: either is allowed, spot is preferred
    batch = objs[("Deployment", "llama-8b-batch")]
    assert required_capacity(batch) is None
    assert preferred_spot_weight(batch) == 100


def test_capacity_labels_follow_the_platform_preset():
    eks = render(config=OperatorConfig.from_env({"KUBETIER_CAPACITY_SCHEME": "eks"}))
    assert required_capacity(eks[("Deployment", "llama-8b-interactive")], "eks.amazonaws.com/capacityType") == (
        "NotIn",
        ["SPOT"],
    )
    custom = render(
        config=OperatorConfig.from_env(
            {"KUBETIER_CAPACITY_LABEL": "example.com/lifecycle", "KUBETIER_CAPACITY_SPOT_VALUE": "preemptible"}
        )
    )
    assert required_capacity(custom[("Deployment", "llama-8b-interactive")], "example.com/lifecycle") == (
        "NotIn",
        ["preemptible"],
    )
    assert required_capacity(custom[("Deployment", "llama-8b-interactive")]) is None


def test_replicas_default_to_min_and_a_requested_count_is_clamped_to_the_bounds():
    # Observed.tier_replicas is the slot a replica decision fills (no autoscaler sets it
    # yet): whatever it asks for, each tier stays within replicas.min..replicas.max.
    objs = render()
    assert objs[("Deployment", "llama-8b-interactive")]["spec"]["replicas"] == 2
    scaled = render(replicas={"interactive": 99, "standard": 0, "batch": 3})
    assert scaled[("Deployment", "llama-8b-interactive")]["spec"]["replicas"] == 6  # max
    assert scaled[("Deployment", "llama-8b-standard-floor")]["spec"]["replicas"] == 1
    assert scaled[("Deployment", "llama-8b-standard")]["spec"]["replicas"] == 1  # min 2
    assert scaled[("Deployment", "llama-8b-batch")]["spec"]["replicas"] == 3


def test_zone_spread_on_every_workload():
    for (kind, _name), obj in render().items():
        if kind != "Deployment":
            continue
        [spread] = pod(obj)["topologySpreadConstraints"]
        assert spread["topologyKey"] == "topology.kubernetes.io/zone" and spread["maxSkew"] == 1
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def test_selectors_are_disjoint_and_match_their_templates():
    deployments = [o for (k, _), o in render().items() if k == "Deployment"]
    for d in deployments:
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    for a in deployments:
        for b in deployments:
            if a is not b:
                assert (
                    not a["spec"]["selector"]["matchLabels"].items()
                    <= b["spec"]["template"]["metadata"]["labels"].items()
                )


def test_service_and_pdb_select_serving_pods_of_their_tier_only():
    objs = render()
    standby = objs[("Deployment", "llama-8b-interactive-standby")]
    standby_labels = standby["spec"]["template"]["metadata"]["labels"]
    assert standby_labels[ROLE] == "standby" and standby["spec"]["replicas"] == 1
    serving_labels = objs[("Deployment", "llama-8b-interactive")]["spec"]["template"]["metadata"]["labels"]
    svc, pdb = objs[("Service", "llama-8b-interactive")], objs[("PodDisruptionBudget", "llama-8b-interactive")]
    for selector in (svc["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= serving_labels.items()
        assert not selector.items() <= standby_labels.items()
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["ports"][0]["port"] == 8000
    assert pdb["spec"]["maxUnavailable"] == 1
    # both floor and spot-eligible pods of a tier count against the tier's one PDB
    std_pdb = objs[("PodDisruptionBudget", "llama-8b-standard")]["spec"]["selector"]["matchLabels"]
    for name in ("llama-8b-standard-floor", "llama-8b-standard"):
        assert std_pdb.items() <= objs[("Deployment", name)]["spec"]["template"]["metadata"]["labels"].items()


def test_readiness_and_graceful_termination():
    d = render()[("Deployment", "llama-8b-batch")]
    [c] = pod(d)["containers"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop > 0 and pod(d)["terminationGracePeriodSeconds"] > pre_stop
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_vllm_command_line():
    [c] = pod(render()[("Deployment", "llama-8b-interactive")])["containers"]
    cmd = c["command"]
    assert cmd[:5] == [
        "python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "meta-llama/Llama-3.1-8B-Instruct",
    ]
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert flags["--served-model-name"] == "llama-3.1-8b" and flags["--port"] == "8000"
    assert flags["--max-num-seqs"] == "256" and flags["--tensor-parallel-size"] == "1"
    assert c["image"].startswith("vllm/vllm-openai:")


def test_simulator_engine_reads_its_profile_from_the_routing_configmap():
    objs = render(sample_body("modelservice-simulator.yaml"))
    d = objs[("Deployment", "sim-llama-fast")]
    [c] = pod(d)["containers"]
    assert c["command"][:2] == ["kubetier", "engine-sim"]
    i = c["command"].index("--profile")
    profile_path = c["command"][i + 1]
    assert c["command"][-2:] == ["--model-load-seconds", "5"]  # user args last
    mount = next(m for m in c["volumeMounts"] if m["name"] == "profile")
    volume = next(v for v in pod(d)["volumes"] if v["name"] == "profile")
    assert profile_path.startswith(mount["mountPath"])
    cm = objs[("ConfigMap", volume["configMap"]["name"])]
    assert json.loads(cm["data"][volume["configMap"]["items"][0]["key"]])["name"] == "llama-3.1-8b-h100"


def test_sglang_with_tensor_parallelism_and_inline_profile():
    objs = render(sample_body("modelservice-inline-profile.yaml"))
    [c] = pod(objs[("Deployment", "llama-8b-sglang-chat")])["containers"]
    flags = dict(zip(c["command"][3::2], c["command"][4::2]))
    assert c["command"][:3] == ["python3", "-m", "sglang.launch_server"]
    assert flags["--tp-size"] == "2" and flags["--port"] == "30000"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "SGLANG_LOG_LEVEL", "value": "info"} in c["env"]
    routing = json.loads(objs[("ConfigMap", "llama-8b-sglang-routing")]["data"]["routing.json"])
    assert routing["profile"]["name"] == "llama-3.1-8b-h100-tp2"


def test_routing_configmap_follows_the_contract():
    cm = render()[("ConfigMap", "llama-8b-routing")]
    assert cm["metadata"]["labels"]["kubetier.io/routing-config"] == "true"
    doc = json.loads(cm["data"]["routing.json"])
    assert set(doc) == {"model", "namespace", "service", "tiers", "profile", "access", "port"}
    assert (doc["model"], doc["namespace"], doc["service"], doc["port"]) == (
        "llama-3.1-8b",
        "default",
        "llama-8b",
        8000,
    )
    assert [set(t) for t in doc["tiers"]] == [
        {"name", "ttftMs", "tpotMs", "attainmentPercent", "priority", "meanOutputTokens", "onLate"}
    ] * 3
    assert [(t["name"], t["tpotMs"], t["onLate"]) for t in doc["tiers"]] == [
        ("interactive", 30, "reject"),
        ("standard", 60, "reject"),
        ("batch", 150, "queue"),
    ]
    assert doc["access"] == [
        {"secretName": "team-a-key", "tiers": ["interactive", "standard", "batch"]},
        {"secretName": "batch-jobs-key", "tiers": ["batch"]},
    ]
    assert doc["profile"]["kvCapacityTokens"] > 0 and "decode" in doc["profile"]
    # deterministic: the same spec renders byte-identical data
    assert render()[("ConfigMap", "llama-8b-routing")]["data"] == cm["data"]


def test_profile_from_a_configmap():
    body = sample_body("modelservice-simulator.yaml")
    body["spec"]["latencyProfile"] = {"configMapRef": {"name": "profiles", "key": "fast.yaml"}}
    with pytest.raises(Unsatisfiable) as err:
        render(body)
    assert err.value.reason == "ProfileNotFound" and "configMapRef" in err.value.message
    with pytest.raises(Unsatisfiable) as err:
        render(body, Observed(profile_configmap={"fast.yaml": "name: broken\n"}))
    assert err.value.reason == "ProfileInvalid"
    good = yaml.safe_dump({**load_profile("llama-3.1-8b-h100").to_dict(), "name": "from-cm"})
    objs = render(body, Observed(profile_configmap={"fast.yaml": good}))
    assert json.loads(objs[("ConfigMap", "sim-llama-routing")]["data"]["routing.json"])["profile"]["name"] == "from-cm"


def test_cpu_only_simulator_requests_no_gpu():
    body = sample_body("modelservice-simulator.yaml")
    body["spec"]["resources"]["gpusPerReplica"] = 0
    d = render(body)[("Deployment", "sim-llama-fast")]
    [c] = pod(d)["containers"]
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    assert "tolerations" not in pod(d)


def test_no_empty_lists_that_the_apiserver_would_drop():
    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            if not node:
                yield path
            for i, v in enumerate(node):
                yield from walk(v, f"{path}[{i}]")

    for key, obj in render().items():
        assert list(walk(obj, "")) == [], key
