"""model.cache.image: the weights as an OCI image volume (Kubernetes ImageVolume,
`volumes[].image`), accepted and kept by the real API server of the local cluster.

The local cluster (e2e/cluster/cluster.py) runs Kubernetes 1.34 with the ImageVolume
feature gate on (beta, off by default until 1.35: with it off the API server drops the
volume and its mounts without an error, which is why the gate is checked first). KWOK's
fake kubelet pulls nothing, so this checks the API contract (CRD schema and CEL rule, the
operator's rendering, the Deployment and pods as stored), not a real image mount."""

from __future__ import annotations

import json

from e2e_support import Kubectl, KubectlError, model_service, serving_pods, tier, wait_until

REFERENCE = "registry.example.com/models/llama-3.1-8b@sha256:" + "b" * 64


def cached_service(name: str, namespace: str, cache: dict) -> dict:
    ms = model_service(name, namespace, [tier("chat", 500, 50, 10, replicas=1)])
    ms["spec"]["model"]["cache"] = cache
    return ms


def image_volume_enabled(kubectl: Kubectl) -> bool:
    metrics = kubectl("get", "--raw", "/metrics")
    return 'kubernetes_feature_enabled{name="ImageVolume",stage="BETA"} 1' in metrics


def test_image_volume_model_cache_is_rendered_and_kept_by_the_api_server(
    kubectl: Kubectl, crds, operator, gpu_nodes, namespace
):
    version = json.loads(kubectl("version", "-o", "json"))["serverVersion"]
    assert (int(version["major"]), int(version["minor"].rstrip("+"))) >= (1, 33), version
    assert image_volume_enabled(kubectl), "the local cluster must run with --feature-gates=ImageVolume=true"

    kubectl.apply(cached_service("cached", namespace, {"image": {"reference": REFERENCE}, "mountPath": "/weights"}))
    stored = kubectl.json("get", "modelservice", "cached", "-n", namespace)
    assert stored["spec"]["model"]["cache"] == {
        "image": {"reference": REFERENCE, "pullPolicy": "IfNotPresent"},
        "mountPath": "/weights",
    }

    def deployment() -> dict | None:
        items = kubectl.items("deployments", namespace, "kubetier.io/service=cached")
        return items[0] if items else None

    dep = wait_until(deployment, "the engine Deployment", timeout=60)
    pod_spec = dep["spec"]["template"]["spec"]
    volume = {"name": "model-cache", "image": {"reference": REFERENCE, "pullPolicy": "IfNotPresent"}}
    assert volume in pod_spec["volumes"], pod_spec["volumes"]
    mounts = pod_spec["containers"][0]["volumeMounts"]
    assert {"name": "model-cache", "mountPath": "/weights", "readOnly": True} in mounts, mounts

    # The ReplicaSet's pods as the API server stored them still carry the volume.
    pods = wait_until(lambda: serving_pods(kubectl, namespace, "cached"), "the engine pod", timeout=90)
    assert all(volume in p["spec"]["volumes"] for p in pods), [p["spec"]["volumes"] for p in pods]
    # The operator saw the volume kept (it reports ImageVolumeUnsupported when it is dropped).
    conds = kubectl.json("get", "modelservice", "cached", "-n", namespace).get("status", {}).get("conditions", [])
    assert not [c for c in conds if c.get("reason") == "ImageVolumeUnsupported"], conds


def test_api_server_refuses_both_or_neither_cache_source(kubectl: Kubectl, crds, namespace):
    for bad in (
        {"claimName": "weights", "image": {"reference": REFERENCE}},
        {"mountPath": "/models"},
    ):
        try:
            kubectl.apply(cached_service("bad-cache", namespace, bad))
        except KubectlError as exc:
            assert "model.cache: set exactly one of claimName, image" in str(exc), str(exc)
        else:
            raise AssertionError(f"the API server accepted model.cache={bad}")
    try:
        kubectl.apply(
            cached_service("bad-policy", namespace, {"image": {"reference": REFERENCE, "pullPolicy": "Often"}})
        )
    except KubectlError as exc:
        assert "pullPolicy" in str(exc), str(exc)
    else:
        raise AssertionError("the API server accepted pullPolicy: Often")
