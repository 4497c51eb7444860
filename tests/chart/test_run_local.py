"""charts/kubetier/hack/run_local.py's pure parts: how a chart container's command line
becomes a local process's (loopback, free ports, Kubernetes `$(VAR)` expansion)."""

from __future__ import annotations

from chart_support import load_run_local

run_local = load_run_local()


def test_operator_args_rebound_to_loopback_and_index_expanded():
    container = {
        "command": ["kubetier", "operator"],
        "args": [
            "--all-namespaces",
            "--peering=kubetier",
            "--priority=$(POD_INDEX)",
            "--liveness=http://0.0.0.0:8081/healthz",
            "--metrics-port=8082",
            "--metrics-bind-address=0.0.0.0",
        ],
    }
    argv = run_local.local_command(
        "operator", container, {"liveness": 40001, "metrics-port": 40002}, {"POD_INDEX": "1"}
    )
    assert argv == [
        "operator",
        "--all-namespaces",
        "--peering=kubetier",
        "--priority=1",
        "--liveness=http://127.0.0.1:40001/healthz",
        "--metrics-port=40002",
        "--metrics-bind-address=127.0.0.1",
    ]


def test_router_gets_local_endpoints_and_its_port():
    container = {"command": ["kubetier", "router"], "args": ["--host=0.0.0.0", "--port=8080", "--workers=1"]}
    argv = run_local.local_command("router", container, {"port": 40002}, {})
    assert argv == ["router", "--host=127.0.0.1", "--port=40002", "--workers=1", "--local-endpoints"]


def test_unknown_variables_stay_as_kubernetes_leaves_them():
    assert run_local.expand("--x=$(NOPE)-$(A)", {"A": "1"}) == "--x=$(NOPE)-1"


def test_plain_env_keeps_literal_values_only():
    c = {
        "env": [
            {"name": "A", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
            {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]
    }
    assert run_local.plain_env(c) == {"A": "1"}


def test_operator_reads_router_status_from_the_local_router():
    env = {"A": "1", "KUBETIER_ROUTER_STATUS_URL": "http://kubetier-router.kubetier-system.svc:8080/kubetier/status"}
    assert run_local.loopback_router_status(env, 40002) == {
        "A": "1",
        "KUBETIER_ROUTER_STATUS_URL": "http://127.0.0.1:40002/kubetier/status",
    }
    assert run_local.loopback_router_status({"A": "1"}, 40002) == {"A": "1"}
