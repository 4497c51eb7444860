"""The real-engine contract the operator renders: vLLM/SGLang flags that match the latency
profile the router predicts with, env from Secrets/ConfigMaps, the shared model cache and
start-up probes sized for loading weights (crds/samples/modelservice-vllm.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from modelservice_builders import parse, sample_body

from kubetier.api import InvalidObject, admit
from kubetier.operator.modelservice import engines
from kubetier.operator.modelservice.desired import desired
from kubetier.operator.modelservice.model import Observed, OperatorConfig
from kubetier.policy.latency import load_profile

REPO = Path(__file__).resolve().parents[2]
# vLLM's own CLI flag names, written by the real-vLLM e2e tier from the installed vLLM's
# parser (e2e/vllm/test_real_vllm.py checks it is current).
VLLM_FLAGS = REPO / "e2e" / "vllm" / "vllm-cli-flags.txt"


def render(body):
    objs = desired(parse(body), Observed(), OperatorConfig())
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def engine_container(objs, name):
    return objs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]


def flags(cmd: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    i = 0
    while i < len(cmd):
        if cmd[i].startswith("--"):
            nxt = cmd[i + 1] if i + 1 < len(cmd) else None
            if nxt is not None and not nxt.startswith("--"):
                out[cmd[i]] = nxt
                i += 2
                continue
            out[cmd[i]] = None
        i += 1
    return out


def routing_profile(objs, ms_name):
    cm = objs[("ConfigMap", f"{ms_name}-routing")]
    return json.loads(cm["data"]["routing.json"])["profile"]


@pytest.fixture(scope="module")
def vllm_objs():
    return render(sample_body("modelservice-vllm.yaml"))


def test_vllm_sample_flags_match_the_profile_the_router_predicts_with(vllm_objs):
    c = engine_container(vllm_objs, "llama-8b-vllm-interactive")
    assert c["command"][:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    f = flags(c["command"][3:])
    profile = routing_profile(vllm_objs, "llama-8b-vllm")
    assert f["--model"] == "meta-llama/Llama-3.1-8B-Instruct" and f["--served-model-name"] == "llama-3.1-8b"
    assert f["--max-num-seqs"] == str(profile["maxNumSeqs"]) == "256"
    assert f["--max-num-batched-tokens"] == str(profile["maxNumBatchedTokens"]) == "2048"
    assert f["--max-model-len"] == "8192"
    assert f["--gpu-memory-utilization"] == "0.9"
    assert "--enable-chunked-prefill" in f and f["--enable-chunked-prefill"] is None
    assert f["--host"] == "0.0.0.0" and f["--port"] == "8000"


def test_engine_limits_flow_into_the_routing_document_and_the_flags():
    """maxNumSeqs 64 and no maxNumBatchedTokens: the engine gets 64 and the profile's 2048,
    and the router's profile says the same (before, the engine fell back to its own default
    while the router predicted with the profile's)."""
    body = sample_body("modelservice-vllm.yaml")
    body["spec"]["engine"]["maxNumSeqs"] = 64
    del body["spec"]["engine"]["maxNumBatchedTokens"]
    objs = render(body)
    f = flags(engine_container(objs, "llama-8b-vllm-batch")["command"][3:])
    profile = routing_profile(objs, "llama-8b-vllm")
    builtin = load_profile("llama-3.1-8b-h100")
    assert f["--max-num-seqs"] == "64" == str(profile["maxNumSeqs"])
    assert f["--max-num-batched-tokens"] == str(builtin.max_num_batched_tokens) == str(profile["maxNumBatchedTokens"])
    # The simulator engine reads the same profile key: it batches by the same limits.
    cm = objs[("ConfigMap", "llama-8b-vllm-routing")]
    assert json.loads(cm["data"][engines.PROFILE_FILE])["maxNumSeqs"] == 64


def test_sglang_gets_the_same_limits_under_its_own_names():
    body = sample_body("modelservice-vllm.yaml")
    body["spec"]["engine"]["kind"] = "sglang"
    f = flags(engine_container(render(body), "llama-8b-vllm-interactive")["command"][3:])
    assert f["--max-running-requests"] == "256" and f["--chunked-prefill-size"] == "2048"
    assert f["--context-length"] == "8192" and f["--mem-fraction-static"] == "0.9"
    assert "--enable-metrics" in f  # sglang: metrics are off by default


def test_env_from_secrets_and_configmaps(vllm_objs):
    c = engine_container(vllm_objs, "llama-8b-vllm-interactive")
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    assert "value" not in env["HF_TOKEN"]
    assert env["VLLM_LOGGING_LEVEL"]["value"] == "INFO"
    assert c["envFrom"] == [{"configMapRef": {"name": "vllm-tuning", "optional": True}}]
    # No token text anywhere in what the operator writes.
    assert "hf_" not in json.dumps(list(vllm_objs.values()))


def test_model_cache_is_one_read_only_claim_for_every_replica(vllm_objs):
    for name in ("llama-8b-vllm-interactive", "llama-8b-vllm-batch"):
        pod = vllm_objs[("Deployment", name)]["spec"]["template"]["spec"]
        [vol] = [v for v in pod["volumes"] if v["name"] == engines.MODEL_CACHE_VOLUME]
        assert vol["persistentVolumeClaim"] == {"claimName": "llama-weights", "readOnly": True}
        [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == engines.MODEL_CACHE_VOLUME]
        assert mount == {"name": "model-cache", "mountPath": "/models", "readOnly": True}
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["HF_HUB_CACHE"] == "/models" and env["HF_HUB_OFFLINE"] == "1"


def test_startup_probe_covers_weight_loading(vllm_objs):
    c = engine_container(vllm_objs, "llama-8b-vllm-interactive")
    probe = c["startupProbe"]
    assert probe["httpGet"]["path"] == "/health"
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 900  # the sample's startupTimeoutSeconds
    assert probe["periodSeconds"] * (probe["failureThreshold"] - 1) < 900
    # Default: 30 minutes.
    body = sample_body("modelservice-three-tier.yaml")
    probe = engine_container(render(body), "llama-8b-interactive")["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == 1800


def test_no_cache_no_cache_env():
    body = sample_body("modelservice-three-tier.yaml")
    c = engine_container(render(body), "llama-8b-interactive")
    assert "env" not in c and "envFrom" not in c
    assert all(
        v["name"] != engines.MODEL_CACHE_VOLUME
        for v in render(body)[("Deployment", "llama-8b-interactive")]["spec"]["template"]["spec"]["volumes"]
    )


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        (
            {"env": [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
            "set value or valueFrom, not both",
        ),
        ({"env": [{"name": "A", "valueFrom": {}}]}, "set exactly one of secretKeyRef, configMapKeyRef"),
        (
            {"envFrom": [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}]},
            "set exactly one of secretRef, configMapRef",
        ),
        ({"gpuMemoryUtilization": 1.5}, "gpuMemoryUtilization"),
        ({"startupTimeoutSeconds": 5}, "startupTimeoutSeconds"),
    ],
)
def test_bad_engine_fields_are_refused_naming_the_field(engine, message):
    body = yaml.safe_load((REPO / "crds/samples/modelservice-three-tier.yaml").read_text())
    body["spec"]["engine"].update(engine)
    with pytest.raises(InvalidObject, match=message.replace("[", r"\[").replace("]", r"\]")):
        admit(body)


def test_rendered_vllm_flags_are_vllm_cli_names(vllm_objs):
    """Every flag the operator renders for vLLM is one of the installed vLLM's own CLI flags."""
    known = {ln.strip() for ln in VLLM_FLAGS.read_text().splitlines() if ln.startswith("--")}
    assert len(known) > 100, "the snapshot should hold vLLM's whole CLI"
    rendered = {a for a in engine_container(vllm_objs, "llama-8b-vllm-interactive")["command"] if a.startswith("--")}
    assert rendered <= known, f"not vLLM CLI flags: {sorted(rendered - known)}"


def test_model_cache_as_an_oci_image_volume():
    """model.cache.image: Kubernetes ImageVolume (volumes[].image), read-only at mountPath,
    the same HF cache env as a claim."""
    body = sample_body("modelservice-vllm.yaml")
    body["spec"]["model"]["cache"] = {
        "image": {"reference": "registry.example.com/models/llama-3.1-8b@sha256:" + "a" * 64},
        "mountPath": "/weights",
    }
    objs = render(body)
    pod = objs[("Deployment", "llama-8b-vllm-interactive")]["spec"]["template"]["spec"]
    [vol] = [v for v in pod["volumes"] if v["name"] == engines.MODEL_CACHE_VOLUME]
    assert vol == {
        "name": "model-cache",
        "image": {
            "reference": "registry.example.com/models/llama-3.1-8b@sha256:" + "a" * 64,
            "pullPolicy": "IfNotPresent",
        },
    }
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == engines.MODEL_CACHE_VOLUME]
    assert mount == {"name": "model-cache", "mountPath": "/weights", "readOnly": True}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HF_HUB_CACHE"] == "/weights" and env["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize(
    "cache",
    [
        {"claimName": "w", "image": {"reference": "r.example/m:v1"}},
        {"mountPath": "/models"},
    ],
)
def test_model_cache_needs_exactly_one_source(cache):
    body = yaml.safe_load((REPO / "crds/samples/modelservice-three-tier.yaml").read_text())
    body["spec"]["model"]["cache"] = cache
    with pytest.raises(InvalidObject, match=r"model\.cache: set exactly one of claimName, image"):
        admit(body)


def test_model_cache_image_pull_policy_is_checked():
    body = yaml.safe_load((REPO / "crds/samples/modelservice-three-tier.yaml").read_text())
    body["spec"]["model"]["cache"] = {"image": {"reference": "r.example/m:v1", "pullPolicy": "Sometimes"}}
    with pytest.raises(InvalidObject, match="pullPolicy"):
        admit(body)
