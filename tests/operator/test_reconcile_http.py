"""The reconcile against an HTTP-level fake of the Kubernetes API (real sockets on
127.0.0.1): create -> children applied -> status written -> steady state makes no
writes; spec changes apply only what changed; unsatisfiable specs degrade, never raise."""

from __future__ import annotations

import datetime as dt

import pytest
from modelservice_builders import cluster_nodes, gpu_node, sample_body

from kubetier.kube import KubeClient
from kubetier.operator.identity import FIELD_MANAGER
from kubetier.operator.modelservice.model import OperatorConfig
from kubetier.operator.modelservice.reconcile import reconcile

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def conditions(body):
    return {c["type"]: (c["status"], c["reason"]) for c in body["status"]["conditions"]}


def run_controllers(fake):
    """Play Deployment controller + scheduler + kubelet: every Deployment gets its pods,
    ready, on a node whose capacity type its affinity allows (spot first if preferred)."""
    for pod in fake.of_kind("Pod"):
        fake.remove("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])
    for d in fake.of_kind("Deployment"):
        spec = d["spec"]
        terms = spec["template"]["spec"].get("affinity", {}).get("nodeAffinity", {})
        node = "spot-a" if "preferredDuringSchedulingIgnoredDuringExecution" in terms else "od-a"
        for i in range(spec["replicas"]):
            fake.put(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{d['metadata']['name']}-{i}",
                        "namespace": d["metadata"]["namespace"],
                        "labels": spec["template"]["metadata"]["labels"],
                    },
                    "spec": {"nodeName": node},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]},
                }
            )
        n = spec["replicas"]
        d["status"] = {
            "observedGeneration": d["metadata"]["generation"],
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": n,
            "availableReplicas": n,
        }
        fake.objects[("Deployment", d["metadata"]["namespace"], d["metadata"]["name"])] = d


async def tick(fake, api, when=T0):
    body = fake.get("ModelService", "default", "llama-8b")
    fake.reset_requests()
    return await reconcile(api, body, OperatorConfig(), when)


@pytest.fixture
async def api(fake_kube):
    client = KubeClient.for_url(fake_kube.url, field_manager=FIELD_MANAGER)
    yield client
    await client.aclose()


async def test_create_apply_status_then_steady_state_makes_no_writes(fake_kube, api):
    for node in cluster_nodes():
        fake_kube.put(node)
    fake_kube.put(sample_body())

    # 1. first reconcile: every child applied server-side, status written, events posted
    first = await tick(fake_kube, api)
    assert len(first.applied) == 12 and not first.deleted and first.status_written
    applies = [r for r in fake_kube.writes() if r[0] == "PATCH" and "/status" not in r[1]]
    assert len(applies) == 12
    assert all("fieldManager=kubetier-operator" in path and "force=true" in path for _, path in applies)
    body = fake_kube.get("ModelService", "default", "llama-8b")
    assert conditions(body)["Progressing"] == ("True", "Creating")
    assert conditions(body)["Ready"] == ("False", "TiersNotReady")
    assert conditions(body)["Degraded"] == ("False", "AsExpected")
    assert body["status"]["endpoint"] == "http://kubetier-router.default.svc:8080/v1"
    assert {e["reason"] for e in fake_kube.of_kind("Event")} >= {"Creating", "TiersNotReady"}
    for d in fake_kube.of_kind("Deployment"):
        assert d["metadata"]["ownerReferences"][0]["uid"] == "uid-1234"

    # 2. controllers bring the pods up: no child changes, status flips to Ready
    run_controllers(fake_kube)
    second = await tick(fake_kube, api, T0 + dt.timedelta(seconds=10))
    assert second.applied == [] and second.status_written
    body = fake_kube.get("ModelService", "default", "llama-8b")
    assert conditions(body)["Ready"] == ("True", "AllTiersReady")
    assert conditions(body)["Progressing"] == ("False", "Complete")
    tiers = {t["name"]: t for t in body["status"]["tiers"]}
    assert tiers["interactive"] == {
        "name": "interactive",
        "replicas": 2,
        "desiredReplicas": 2,
        "readyReplicas": 2,
        "standbyReplicas": 1,
        "spotReplicas": 0,
        "onDemandReplicas": 2,
        "fallbackReplicas": 0,
        "migrations": 0,
    }
    assert tiers["batch"]["spotReplicas"] == 1 and tiers["standard"]["spotReplicas"] == 0
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-11-23T12:00:10Z" and ready["observedGeneration"] == 1

    # 3. steady state: reads only, however often it runs
    for i in range(3):
        steady = await tick(fake_kube, api, T0 + dt.timedelta(seconds=20 + 10 * i))
        assert fake_kube.writes() == [], fake_kube.writes()
        assert steady.applied == [] and not steady.status_written
        assert all(method == "GET" for method, _ in fake_kube.requests) and fake_kube.requests


async def test_spec_change_applies_only_what_changed_and_prunes(fake_kube, api):
    for node in cluster_nodes():
        fake_kube.put(node)
    fake_kube.put(sample_body())
    await tick(fake_kube, api)
    run_controllers(fake_kube)
    await tick(fake_kube, api)

    body = fake_kube.get("ModelService", "default", "llama-8b")
    body["spec"]["tiers"][2]["replicas"]["min"] = 3  # batch: 1 -> 3
    body["spec"]["tiers"][0]["prewarm"]["standby"] = 0  # interactive: drop the standby
    body["metadata"]["generation"] = 2
    fake_kube.objects[("ModelService", "default", "llama-8b")] = body
    outcome = await tick(fake_kube, api, T0 + dt.timedelta(minutes=1))
    assert outcome.applied == ["Deployment/llama-8b-batch"]
    assert outcome.deleted == ["Deployment/llama-8b-interactive-standby"]
    assert fake_kube.get("Deployment", "default", "llama-8b-batch")["spec"]["replicas"] == 3
    assert fake_kube.get("Deployment", "default", "llama-8b-interactive-standby") is None
    status = fake_kube.get("ModelService", "default", "llama-8b")["status"]
    assert status["observedGeneration"] == 2 and conditions({"status": status})["Progressing"][0] == "True"


async def test_objects_we_do_not_own_are_never_pruned(fake_kube, api):
    for node in cluster_nodes():
        fake_kube.put(node)
    fake_kube.put(sample_body())
    stranger = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "someone-elses", "namespace": "default", "labels": {"kubetier.io/service": "llama-8b"}},
    }
    fake_kube.put(stranger)
    outcome = await tick(fake_kube, api)
    assert "ConfigMap/someone-elses" not in outcome.deleted
    assert fake_kube.get("ConfigMap", "default", "someone-elses") is not None


async def test_not_enough_gpus_degrades_without_raising(fake_kube, api):
    fake_kube.put(gpu_node("small", gpus=2))
    fake_kube.put(sample_body())
    outcome = await tick(fake_kube, api)
    assert outcome.problem is not None and outcome.problem.reason == "InsufficientGPUs"
    body = fake_kube.get("ModelService", "default", "llama-8b")
    assert conditions(body)["Degraded"] == ("True", "InsufficientGPUs")
    assert conditions(body)["Ready"] == ("False", "Degraded")
    warnings = [e for e in fake_kube.of_kind("Event") if e["type"] == "Warning"]
    assert any(e["reason"] == "InsufficientGPUs" for e in warnings)
    # the workloads are still applied: pods wait Pending for GPUs rather than nothing existing
    assert len(outcome.applied) == 12
    # and a second pass with the same shortage writes nothing new
    await tick(fake_kube, api)
    await tick(fake_kube, api)
    assert [w for w in fake_kube.writes() if "/status" in w[1]] == []


async def test_missing_profile_configmap_degrades_and_keeps_running_children(fake_kube, api):
    for node in cluster_nodes():
        fake_kube.put(node)
    body = sample_body()
    fake_kube.put(body)
    await tick(fake_kube, api)
    body = fake_kube.get("ModelService", "default", "llama-8b")
    body["spec"]["latencyProfile"] = {"configMapRef": {"name": "missing", "key": "profile.yaml"}}
    fake_kube.objects[("ModelService", "default", "llama-8b")] = body
    outcome = await tick(fake_kube, api)
    assert outcome.problem.reason == "ProfileNotFound" and outcome.applied == [] and outcome.deleted == []
    assert conditions(fake_kube.get("ModelService", "default", "llama-8b"))["Degraded"] == ("True", "ProfileNotFound")
    assert fake_kube.get("Deployment", "default", "llama-8b-batch") is not None


async def test_spec_the_models_refuse_degrades_as_invalid_spec(fake_kube, api):
    body = sample_body()
    body["spec"]["tiers"][1]["tpotMs"] = 30  # CEL would refuse this; say the CRD was older
    fake_kube.put(body)
    outcome = await tick(fake_kube, api)
    assert outcome.problem.reason == "InvalidSpec" and "tpotMs" in outcome.problem.message
    assert conditions(fake_kube.get("ModelService", "default", "llama-8b"))["Degraded"] == ("True", "InvalidSpec")
    assert fake_kube.of_kind("Deployment") == []


async def test_image_volume_dropped_by_the_api_server_degrades_the_service(fake_kube, api):
    """model.cache.image on an API server with the ImageVolume gate off: the Deployment is
    stored without the volume (no error from the server), so the reconcile reports it
    (Degraded=True, ImageVolumeUnsupported) instead of running engines without weights."""
    for node in cluster_nodes():
        fake_kube.put(node)
    body = sample_body("modelservice-vllm.yaml")
    body["metadata"]["name"] = "llama-8b"
    body["spec"]["model"]["cache"] = {"image": {"reference": "registry.example.com/m:v1", "pullPolicy": "IfNotPresent"}}
    fake_kube.put(body)
    fake_kube.image_volume_gate = False
    out = await tick(fake_kube, api)
    assert out.problem is not None and out.problem.reason == "ImageVolumeUnsupported", out.problem
    ms = fake_kube.get("ModelService", "default", "llama-8b")
    assert conditions(ms)["Degraded"] == ("True", "ImageVolumeUnsupported")
    assert "model.cache.image" in next(c["message"] for c in ms["status"]["conditions"] if c["type"] == "Degraded")
    # With the gate on, the same spec applies cleanly.
    fake_kube.image_volume_gate = True
    out = await tick(fake_kube, api)
    assert out.problem is None or out.problem.reason != "ImageVolumeUnsupported"
    deps = [d for d in fake_kube.of_kind("Deployment") if d["metadata"]["name"].startswith("llama-8b")]
    assert deps and all(any("image" in v for v in d["spec"]["template"]["spec"]["volumes"]) for d in deps)
