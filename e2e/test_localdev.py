"""kubetier.localdev.LocalEngines on the real cluster: one loopback process per Running
managed pod, the pod annotated with its endpoint, the process gone with the pod."""

from __future__ import annotations

import importlib.util
import os
import sys
import urllib.request

import pytest

from e2e_support import GPU, IN_CI, Kubectl, wait_until
from kubetier.localdev import LOCAL_ENDPOINT_ANNOTATION, EngineArgs, LocalEngines, engine_sim_command


def managed_deployment(name: str, namespace: str, replicas: int) -> dict:
    labels = {
        "app.kubernetes.io/managed-by": "kubetier",
        "kubetier.io/service": name,
        "kubetier.io/tier": "t",
        "kubetier.io/role": "serving",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"kubetier.io/service": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "engine",
                            "image": "kubetier/engine-sim",
                            "args": [
                                "engine-sim",
                                "--port",
                                "8000",
                                "--profile",
                                "llama-3.1-8b-h100",
                                "--model",
                                "llama-local",
                            ],
                            "resources": {"limits": {GPU: "1"}},
                        }
                    ],
                },
            },
        },
    }


def http_server(args: EngineArgs, port: int) -> list[str]:
    """Stand-in engine: any process that serves HTTP on the given loopback port."""
    return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def annotations(kubectl: Kubectl, namespace: str) -> dict[str, str | None]:
    return {
        f"{namespace}/{p['metadata']['name']}": (p["metadata"].get("annotations") or {}).get(LOCAL_ENDPOINT_ANNOTATION)
        for p in kubectl.items("pods", namespace)
        if not p["metadata"].get("deletionTimestamp")
    }


def exercise(kubectl: Kubectl, api_client, namespace: str, command, probe_path: str) -> int:
    """Scale a managed Deployment 2 -> 1 under LocalEngines; returns how many engines were stopped."""
    kubectl.apply(managed_deployment("local", namespace, 2))
    with LocalEngines(api_client, namespace=namespace, command=command, ready_timeout_s=60) as engines:
        eps = engines.wait_for(lambda e: len(e) == 2, timeout_s=90)
        wait_until(
            lambda: annotations(kubectl, namespace) == eps,
            "pods annotated with their endpoints",
            timeout=30,
            describe=lambda: f"{annotations(kubectl, namespace)} vs {eps}",
        )
        for ep in eps.values():
            assert ep.startswith("127.0.0.1:")
            with urllib.request.urlopen(f"http://{ep}{probe_path}", timeout=10) as resp:
                assert resp.status == 200
        pids = engines.processes()

        kubectl("scale", "deployment/local", "-n", namespace, "--replicas=1")
        left = engines.wait_for(lambda e: len(e) == 1, timeout_s=60)
        gone = [pid for ref, pid in pids.items() if ref not in left]
        assert len(gone) == 1
        wait_until(lambda: not alive(gone[0]), "the removed pod's engine to stop", timeout=15)
        still = engines.processes()
    assert not any(alive(pid) for pid in still.values()), "LocalEngines left processes behind"
    wait_until(
        lambda: set(annotations(kubectl, namespace).values()) == {None},
        "local-endpoint annotations removed on close",
        timeout=15,
    )
    return len(gone) + len(still)


def test_local_engines_with_a_stand_in_command(kubectl: Kubectl, api_client, gpu_nodes, namespace):
    assert exercise(kubectl, api_client, namespace, http_server, "/") == 2


def test_local_engines_run_the_engine_simulator(kubectl: Kubectl, api_client, gpu_nodes, namespace):
    if importlib.util.find_spec("kubetier.engine_sim.main") is None:
        msg = "kubetier.engine_sim.main is missing (the engine simulator has not landed)"
        pytest.fail(msg) if IN_CI else pytest.skip(msg)
    assert exercise(kubectl, api_client, namespace, engine_sim_command(time_scale=0.1), "/v1/models") == 2
