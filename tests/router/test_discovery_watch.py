"""Router discovery through the Kubernetes layer's watches, against the HTTP-level fake
API: the routing ConfigMap the operator renders and its serving pods reach the router
as they change (no 2 s polling), with one list per watched kind."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "operator"))
from fake_kube import FakeKube  # noqa: E402

from kubetier.api import admit  # noqa: E402
from kubetier.kube import KubeClient  # noqa: E402
from kubetier.operator.modelservice.desired import desired  # noqa: E402
from kubetier.operator.modelservice.model import Observed, OperatorConfig  # noqa: E402
from kubetier.router.discovery import ClusterSource, run_discovery  # noqa: E402


class RecordingRouter:
    def __init__(self) -> None:
        self.configs: list = []

    def update_models(self, cfg) -> None:
        self.configs.append(cfg)

    def servers(self, model: str) -> list[tuple[str, bool, bool]]:
        if not self.configs or model not in self.configs[-1].models:
            return []
        return [(s.server_id, s.ready, s.draining) for s in self.configs[-1].models[model].servers]


def rendered_service() -> tuple[dict, list[dict]]:
    obj = yaml.safe_load((REPO / "crds" / "samples" / "modelservice-three-tier.yaml").read_text())
    obj["metadata"].update({"uid": "u-1", "generation": 1, "namespace": "default"})
    ms = admit(obj)
    return obj, desired(ms, Observed(), OperatorConfig())


def serving_pod(deployment: dict, name: str, ready: bool = True) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": deployment["metadata"]["namespace"],
            "labels": dict(deployment["spec"]["template"]["metadata"]["labels"]),
        },
        "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


async def until(predicate, timeout=5.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(30)
async def test_router_follows_pods_and_routing_configmaps_by_watch():
    ms, children = rendered_service()
    routing = next(o for o in children if o["kind"] == "ConfigMap")
    deployment = next(o for o in children if o["kind"] == "Deployment" and "standby" not in o["metadata"]["name"])
    model = ms["spec"]["model"]["name"]
    with FakeKube() as fake:
        fake.put({**routing})
        fake.put(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "unused", "namespace": "default"},
                "data": {"api-key": base64.b64encode(b"k").decode()},
            }
        )
        api = KubeClient.for_url(fake.url)
        router = RecordingRouter()
        task = asyncio.create_task(
            run_discovery(router, namespace=None, local_endpoints=False, source=ClusterSource(None, api))
        )
        try:
            await until(lambda: router.configs and model in router.configs[-1].models, what="model discovered")
            assert router.servers(model) == []
            fake.put(serving_pod(deployment, "p1"))
            await until(lambda: router.servers(model) == [("default/p1", True, False)], timeout=1.5, what="pod seen")
            not_ready = serving_pod(deployment, "p1", ready=False)
            fake.put(not_ready)
            await until(lambda: router.servers(model) == [("default/p1", False, False)], timeout=1.5, what="not ready")
            fake.remove("Pod", "default", "p1")
            await until(lambda: router.servers(model) == [], timeout=1.5, what="pod gone")
            fake.remove("ConfigMap", routing["metadata"]["namespace"], routing["metadata"]["name"])
            await until(lambda: model not in router.configs[-1].models, timeout=1.5, what="model gone")
            # One list per watched kind, the rest came by watch.
            assert api.counts[("list", "ConfigMap")] == 1 and api.counts[("list", "Pod")] == 1
            assert api.counts.writes() == 0
        finally:
            task.cancel()
            await api.aclose()
