"""The real kopf operator, in-process, against the HTTP-level fake API: it logs in from
a kubeconfig, watches ModelServices, applies the children, writes status, and once
the cluster has settled its resync timer makes no writes at all."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import kopf
import pytest
import yaml
from modelservice_builders import cluster_nodes, sample_body
from test_reconcile_http import run_controllers

from kubetier.operator import main as operator_main
from kubetier.operator.modelservice.model import OperatorConfig


async def wait_for(predicate, timeout=15.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def write_kubeconfig(path, url):
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "test-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "default"}}],
            }
        )
    )


@contextlib.asynccontextmanager
async def operator_running(fake_kube, tmp_path, monkeypatch, resync_seconds: float) -> AsyncIterator[kopf.Memo]:
    """The kopf operator in this event loop, logged in to ``fake_kube`` from a kubeconfig,
    the cluster's nodes in place; yields its memo once it is ready, stops it on leaving."""
    write_kubeconfig(tmp_path / "kubeconfig", fake_kube.url)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    for node in cluster_nodes():
        fake_kube.put(node)
    registry = kopf.OperatorRegistry()
    operator_main.register(registry, modelservice_resync_seconds=resync_seconds)
    stop, started = asyncio.Event(), asyncio.Event()
    memo = kopf.Memo(config=OperatorConfig())
    operator = asyncio.create_task(
        kopf.operator(
            registry=registry, clusterwide=True, standalone=True, memo=memo, stop_flag=stop, ready_flag=started
        )
    )
    try:
        await asyncio.wait_for(started.wait(), 15)
        yield memo
    finally:
        stop.set()
        await asyncio.wait_for(operator, 20)


def ready(fake) -> str | None:
    body = fake.get("ModelService", "default", "llama-8b") or {}
    return next((c["status"] for c in (body.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), None)


@pytest.mark.timeout(60)
async def test_operator_end_to_end_against_fake_api(fake_kube, tmp_path, monkeypatch):
    async with operator_running(fake_kube, tmp_path, monkeypatch, resync_seconds=0.3) as memo:
        fake_kube.put(sample_body())

        await wait_for(lambda: len(fake_kube.of_kind("Deployment")) == 5, what="Deployments applied")
        await wait_for(lambda: ready(fake_kube) == "False", what="first status")

        def annotations():
            return fake_kube.get("ModelService", "default", "llama-8b")["metadata"].get("annotations", {})

        # kopf records the handled spec after the handler returns, under kubetier.io
        await wait_for(lambda: "kubetier.io/last-handled-configuration" in annotations(), what="kopf diff-base")
        assert all(not k.startswith("kopf.zalando.org") for k in annotations()), annotations()
        body = fake_kube.get("ModelService", "default", "llama-8b")
        assert all(f.startswith("kubetier.io/") for f in body["metadata"].get("finalizers", []))

        run_controllers(fake_kube)
        await wait_for(lambda: ready(fake_kube) == "True", what="Ready=True")
        await asyncio.sleep(1.0)  # let in-flight handlers finish

        controller = memo["shared"]["modelservice"]
        reconciles = controller.reconciles
        fake_kube.reset_requests()
        await asyncio.sleep(1.5)  # about five resync ticks
        assert controller.reconciles >= reconciles + 3, "the resync timer should have reconciled several times"
        # ... from the watch cache: no list, no get, no write (watches may be re-opened).
        requests = [r for r in fake_kube.requests if "watch=" not in r[1]]
        assert requests == [], f"steady state made API requests: {requests}"

        # a spec change reaches the cluster through kopf's update handler
        body = fake_kube.get("ModelService", "default", "llama-8b")
        body["spec"]["tiers"][2]["replicas"]["min"] = 2
        body["metadata"]["generation"] = 2
        fake_kube.store(body)
        await wait_for(
            lambda: fake_kube.get("Deployment", "default", "llama-8b-batch")["spec"]["replicas"] == 2,
            what="batch scaled to 2",
        )


@pytest.mark.timeout(60)
async def test_child_and_pod_changes_reconcile_without_waiting_for_the_resync(fake_kube, tmp_path, monkeypatch):
    """With the resync timer out of the way (300 s), only the watches can make the
    operator notice pods becoming ready or a child deleted behind its back."""
    async with operator_running(fake_kube, tmp_path, monkeypatch, resync_seconds=300) as memo:
        fake_kube.put(sample_body())
        await wait_for(lambda: ready(fake_kube) == "False", what="first status")
        run_controllers(fake_kube)  # pods appear and turn ready: watch events, not a resync
        await wait_for(lambda: ready(fake_kube) == "True", timeout=10, what="Ready=True from pod events")

        fake_kube.remove("Deployment", "default", "llama-8b-batch")
        await wait_for(
            lambda: fake_kube.get("Deployment", "default", "llama-8b-batch") is not None,
            timeout=10,
            what="deleted Deployment re-applied",
        )
        # A node heartbeat (a field no decision reads) triggers nothing.
        controller = memo["shared"]["modelservice"]
        await asyncio.sleep(0.5)
        before = controller.reconciles
        node = fake_kube.get("Node", None, cluster_nodes()[0]["metadata"]["name"])
        node.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True", "lastHeartbeatTime": "x"}]
        fake_kube.store(node)
        await asyncio.sleep(0.5)
        assert controller.reconciles == before
        # A cordoned node (spec.unschedulable) does.
        node["spec"] = {"unschedulable": True}
        fake_kube.store(node)
        await wait_for(lambda: controller.reconciles > before, timeout=5, what="reconcile after cordon")
