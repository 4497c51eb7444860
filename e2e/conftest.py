"""Fixtures of the e2e suite: a real cluster (from KUBECONFIG), the CRDs, the operator
running under its own ServiceAccount, and a fresh namespace per test.

Outside CI a missing prerequisite skips the suite with the command that provides it;
with CI=true it fails (e2e/README.md).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from e2e_support import (
    CLUSTER_UP,
    GPU,
    IN_CI,
    OPERATOR_NAMESPACE,
    OPERATOR_ROLE,
    OPERATOR_SA,
    REPO,
    SESSION_OPERATORS,
    Kubectl,
    OperatorProcess,
    find_kubectl,
    need,
    operator_rbac_objects,
    service_account_kubeconfig,
    wait_until,
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    path = os.environ.get("KUBECONFIG", "")
    need(path, "KUBECONFIG is not set (the e2e suite needs a cluster)", f"run: {CLUSTER_UP}")
    first = path.split(os.pathsep)[0]
    need(Path(first).is_file(), f"KUBECONFIG={path} does not exist", f"run: {CLUSTER_UP}")
    return first


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str) -> Kubectl:
    binary = find_kubectl()
    need(
        binary,
        "kubectl not found (PATH, $KUBECTL or the cluster cache)",
        "run: .venv/bin/python e2e/cluster/cluster.py install",
    )
    k = Kubectl(binary, kubeconfig)
    res = k.run("get", "--raw", "/readyz", timeout=20)
    need(
        res.returncode == 0 and res.stdout.strip() == "ok",
        f"the cluster in {kubeconfig} is not reachable ({(res.stderr or res.stdout).strip()[:200]})",
        f"run: {CLUSTER_UP}",
    )
    return k


@pytest.fixture(scope="session")
def api_client(kubeconfig: str, kubectl: Kubectl):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    api = client.ApiClient(cfg)
    yield api
    api.close()


@pytest.fixture(scope="session")
def gpu_nodes(kubectl: Kubectl) -> list[dict]:
    nodes = [
        n for n in kubectl.items("nodes") if int((n.get("status", {}).get("allocatable") or {}).get(GPU, "0") or 0) > 0
    ]
    need(
        nodes,
        f"no node in the cluster advertises {GPU}",
        "run `make cluster-up` (it creates the fake GPU fleet); on kind, follow e2e/README.md",
    )
    return nodes


@pytest.fixture(scope="session")
def crd_files() -> list[Path]:
    files = sorted((REPO / "crds").glob("*.yaml"))
    assert files, "crds/*.yaml is empty: run `make generate`"
    return files


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl, crd_files: list[Path]) -> list[dict]:
    """Install the generated CRDs (server-side apply: big schemas overflow the
    last-applied annotation) and wait until the apiserver serves them."""
    docs = []
    for f in crd_files:
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    crd_docs = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    assert crd_docs, f"no CustomResourceDefinition in {[f.name for f in crd_files]}"
    kubectl.apply(crd_docs, "--server-side", "--force-conflicts", "--field-manager=kubetier-e2e")
    for d in crd_docs:
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{d['metadata']['name']}")
    return crd_docs


# --------------------------------------------------------------------------- operator identity


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="kubetier-e2e-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def operator_identity(kubectl: Kubectl, kubeconfig: str, crds, workdir: Path) -> dict:
    """ServiceAccount + ClusterRole from kubetier.operator.rbac + a token kubeconfig."""
    kubectl.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
            *operator_rbac_objects(OPERATOR_NAMESPACE, OPERATOR_SA, OPERATOR_ROLE),
        ]
    )
    path = service_account_kubeconfig(
        kubectl, kubeconfig, OPERATOR_NAMESPACE, OPERATOR_SA, workdir / "operator.kubeconfig", duration="2h"
    )
    return {"kubeconfig": path, "user": f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"}


@pytest.fixture(scope="session")
def operator(operator_identity: dict, workdir: Path):
    """`kubetier operator` under its own ServiceAccount, for the whole session."""
    op = OperatorProcess(operator_identity["kubeconfig"], workdir / "operator.log")
    SESSION_OPERATORS.append(op)
    op.start()
    time.sleep(1.0)
    assert op.alive(), f"kubetier operator exited at start:\n{op.log_tail()}"
    yield op
    op.stop()
    # Keep the operator log where a CI run can collect it.
    dest = os.environ.get("KUBETIER_E2E_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        (Path(dest) / "operator.log").write_text(op.log_tail(50_000_000))


@pytest.fixture
def namespace(kubectl: Kubectl, request):
    """A fresh namespace per test; its ModelServices are deleted (and their finalizers
    handled while the operator still runs) before the namespace goes."""
    short = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:30].strip("-")
    name = f"e2e-{short}-{uuid.uuid4().hex[:5]}"
    kubectl.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"kubetier.io/e2e": "true"}}}
    )
    wait_until(
        lambda: kubectl("get", "serviceaccount", "default", "-n", name, "--ignore-not-found", "-o", "name"),
        f"the default ServiceAccount in {name}",
        timeout=30,
    )
    yield name
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    op = request.getfixturevalue("operator") if "operator" in request.fixturenames else None
    if failed and op is not None:
        print(f"----- operator log (tail) -----\n{op.log_tail()}")
    if failed:
        print(kubectl("get", "all,modelservices", "-n", name, "-o", "wide", check=False))
    kubectl(
        "delete",
        "modelservices.kubetier.io",
        "--all",
        "-n",
        name,
        "--wait=true",
        "--timeout=60s",
        "--ignore-not-found",
        check=False,
        timeout=90,
    )
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def pytest_report_header(config):
    return [f"kubetier e2e: KUBECONFIG={os.environ.get('KUBECONFIG', '(unset)')} CI={IN_CI}"]


def pytest_sessionfinish(session, exitstatus):
    # Fail loudly in CI if every test was skipped: a skipped e2e tier is not a pass there.
    if IN_CI and session.testscollected and getattr(session, "testsfailed", 0) == 0:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None and tr.stats.get("skipped") and not tr.stats.get("passed"):
            session.exitstatus = 1
