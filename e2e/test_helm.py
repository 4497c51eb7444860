"""The Helm chart on a real cluster, with the real helm binary.

1. Every valid values file renders manifests the API server accepts
   (`kubectl apply --dry-run=server`).
2. `helm install` with the defaults (what the README says), then the operator and the
   router run as local processes under the chart's own ServiceAccounts (a TokenRequest
   token: KWOK pods run no containers) with the arguments the chart's Deployments carry;
   the three-tier sample becomes Ready and a streaming completion goes through the router.
3. `helm upgrade` with changed values converges; a bad upgrade is refused by the schema.
4. `helm uninstall` removes every object of the release; CRDs and ModelServices stay
   (the documented policy: charts/kubetier/README.md, "Uninstall").
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from chart_support import find_helm, load_run_local

from e2e_support import REPO, Kubectl, condition, model_service, need, session_operator_paused, tier, wait_until

CHART = REPO / "charts" / "kubetier"


run_local = load_run_local()
VALUES_DIR = REPO / "tests" / "chart" / "values"
SAMPLE = REPO / "crds" / "samples" / "modelservice-three-tier.yaml"
# Unique per run: the suite may run from several checkouts against one cluster.
RUN = uuid.uuid4().hex[:5]
RELEASE = f"kt-{RUN}"
CHART_NS = f"kubetier-helm-{RUN}"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
# The API server's PodSecurity admission judges the chart's pods against "restricted".
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
# Kinds the chart can create, namespaced and cluster-scoped (for "nothing left behind").
RELEASE_KINDS = (
    "deployments,services,serviceaccounts,configmaps,secrets,roles,rolebindings,"
    "poddisruptionbudgets,networkpolicies,daemonsets"
)
CLUSTER_KINDS = "clusterroles,clusterrolebindings"


# --------------------------------------------------------------------------- helpers


class Helm:
    def __init__(self, binary: str, kubeconfig: str) -> None:
        self.binary, self.kubeconfig = binary, kubeconfig

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.binary, "--kubeconfig", self.kubeconfig, *args], capture_output=True, text=True, timeout=timeout
        )

    def __call__(self, *args: str, timeout: float = 120) -> str:
        res = self.run(*args, timeout=timeout)
        assert res.returncode == 0, f"helm {' '.join(args)} exited {res.returncode}:\n{res.stderr or res.stdout}"
        return res.stdout


@pytest.fixture(scope="module")
def helm(kubeconfig: str, kubectl: Kubectl) -> Helm:
    binary = find_helm()
    need(
        binary,
        "helm not found ($HELM, the cluster cache or PATH)",
        "run: make ingredients",
    )
    return Helm(binary, kubeconfig)


def container(kubectl: Kubectl, deployment: str) -> dict:
    d = kubectl.json("get", "deployment", deployment, "-n", CHART_NS)
    return d["spec"]["template"]["spec"]["containers"][0]


# --------------------------------------------------------------------------- 1. dry-run


def _dry_run_docs(docs: list[dict]) -> tuple[list[dict], list[str]]:
    """Drop what the API server cannot check here: ServiceMonitors (no Prometheus Operator
    CRDs on the test cluster) and helm hooks (instances of CRDs the same render creates)."""
    kept, dropped = [], []
    for d in docs:
        hook = (d["metadata"].get("annotations") or {}).get("helm.sh/hook")
        if d["kind"] == "ServiceMonitor" or hook:
            dropped.append(f"{d['kind']}/{d['metadata']['name']}")
        else:
            kept.append(d)
    return kept, dropped


@pytest.fixture(scope="module")
def dry_run_namespaces(kubectl: Kubectl):
    """Namespaces the renders name (watchNamespaces), removed after the module."""
    created: set[str] = set()
    yield created
    for ns in sorted(created | {CHART_NS}):
        kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


@pytest.mark.parametrize("values_file", sorted(VALUES_DIR.glob("ok-*.yaml")), ids=lambda p: p.stem)
def test_rendered_manifests_pass_server_side_dry_run(
    kubectl: Kubectl, helm: Helm, crds, values_file: Path, dry_run_namespaces: set
):
    out = helm(
        "template",
        f"{RELEASE}-dry",
        str(CHART),
        "-n",
        CHART_NS,
        "-f",
        str(values_file),
        "--include-crds",
        "--set",
        f"router.service.name={RELEASE}-dry-router",
    )
    docs = [d for d in yaml.safe_load_all(out) if d]
    kept, dropped = _dry_run_docs(docs)
    namespaces = {CHART_NS} | {d["metadata"].get("namespace") for d in kept if d["metadata"].get("namespace")}
    new = {ns for ns in namespaces if not kubectl("get", "namespace", ns, "--ignore-not-found", "-o", "name")}
    dry_run_namespaces.update(new)
    kubectl.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": RESTRICTED}}
            for ns in sorted(namespaces)
        ]
    )
    res = kubectl.run(
        "apply",
        "--dry-run=server",
        "--server-side",
        "--force-conflicts",
        "--field-manager=helm-e2e",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": kept}),
    )
    assert res.returncode == 0, f"the API server refused the {values_file.stem} render:\n{res.stderr}"
    assert "would violate PodSecurity" not in res.stderr, res.stderr
    assert res.stdout.count("(server dry run)") == len(kept), res.stdout
    if "observability" in values_file.stem:
        assert any(x.startswith("ServiceMonitor/") for x in dropped)


# --------------------------------------------------------------------------- 2-4. lifecycle


@pytest.fixture(scope="module")
def app_ns(kubectl: Kubectl, helm: Helm):
    name = f"helm-e2e-{uuid.uuid4().hex[:5]}"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_until(
        lambda: kubectl("get", "serviceaccount", "default", "-n", name, "--ignore-not-found", "-o", "name"),
        f"the default ServiceAccount in {name}",
        timeout=30,
    )
    yield name
    # ModelServices kept across uninstall lose their operator: drop finalizers, then the namespace.
    for ms in kubectl.items("modelservices.kubetier.io", name) if _crd_served(kubectl) else []:
        kubectl(
            "patch",
            "modelservice",
            ms["metadata"]["name"],
            "-n",
            name,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
    kubectl("delete", "namespace", name, "--wait=false", check=False)
    # A failed run must not leave its release behind (cluster-scoped RBAC included).
    helm.run("uninstall", RELEASE, "-n", CHART_NS, "--ignore-not-found", "--wait", "--timeout=60s")
    kubectl("delete", "namespace", CHART_NS, "--wait=false", "--ignore-not-found", check=False)


def _crd_served(kubectl: Kubectl) -> bool:
    return bool(kubectl("get", "crd", "modelservices.kubetier.io", "--ignore-not-found", "-o", "name", check=False))


def _release_objects(kubectl: Kubectl) -> list[str]:
    names = kubectl("get", RELEASE_KINDS, "-A", "-l", INSTANCE, "-o", "name", check=False).split()
    names += kubectl("get", CLUSTER_KINDS, "-l", INSTANCE, "-o", "name", check=False).split()
    return names


def _sample(namespace: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(SAMPLE.read_text()) if d]
    doc["metadata"]["namespace"] = namespace
    return doc


def _ready(kubectl: Kubectl, namespace: str, name: str):
    ms = kubectl.json("get", "modelservice", name, "-n", namespace)
    c = condition(ms, "Ready")
    ok = (
        c
        and c["status"] == "True"
        and (ms.get("status") or {}).get("observedGeneration") == ms["metadata"]["generation"]
    )
    return ms if ok else None


class Lifecycle:
    """State shared by the lifecycle tests below, which run in file order."""

    def __init__(self, notes: str, chart) -> None:
        self.notes, self.chart = notes, chart
        self.procs = chart.procs
        self.router_port = chart.router_port
        self.sample: dict = {}


@pytest.fixture(scope="module")
def lifecycle(kubectl: Kubectl, helm: Helm, kubeconfig: str, app_ns: str, workdir: Path):
    """`helm install` (defaults, as the README says), then the operator and the router as
    local processes under the chart's ServiceAccounts with the chart's arguments
    (charts/kubetier/hack/run_local.py, as docs/install.md says)."""
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CHART_NS, "labels": RESTRICTED}})
    notes = helm("install", RELEASE, str(CHART), "-n", CHART_NS)
    for crd in ("modelservices.kubetier.io", "powerbudgets.kubetier.io"):
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")
    chart = run_local.ChartOnLocalProcesses(kubectl, kubeconfig, RELEASE, CHART_NS, workdir / "helm-local")
    (workdir / "helm-local").mkdir(exist_ok=True)
    with session_operator_paused("the chart's operator runs"):
        try:
            chart.start()
            for c in ("operator", "router"):
                assert chart.procs[c].argv[0] == c
            yield Lifecycle(notes, chart)
        finally:
            chart.stop()


def test_install_prints_next_steps(lifecycle: Lifecycle, helm: Helm):
    assert "STATUS: deployed" in lifecycle.notes
    assert "kubectl apply" in lifecycle.notes and f"kubetier-router.{CHART_NS}.svc:8080/v1" in lifecycle.notes
    manifest = [d for d in yaml.safe_load_all(helm("get", "manifest", RELEASE, "-n", CHART_NS)) if d]
    assert {d["kind"] for d in manifest} >= {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    }


def test_chart_pods_pass_podsecurity_restricted(lifecycle: Lifecycle, kubectl: Kubectl):
    """The release namespace enforces PodSecurity "restricted": the ReplicaSets could
    create the operator and router pods (KWOK leaves them Pending: the fake nodes are
    GPU-tainted, and they would run no container anyway)."""

    def created():
        pods = kubectl.items("pods", CHART_NS, INSTANCE)
        return {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods} >= {"operator", "router"}

    def rs_failures() -> str:
        return "\n".join(
            f"{rs['metadata']['name']}: {c.get('message')}"
            for rs in kubectl.items("replicasets", CHART_NS, INSTANCE)
            for c in (rs.get("status") or {}).get("conditions") or []
            if c["type"] == "ReplicaFailure"
        )

    wait_until(
        created, "the chart's pods to be admitted under PodSecurity restricted", timeout=30, describe=rs_failures
    )
    assert not rs_failures()


def test_sample_ready_under_the_chart_rbac(lifecycle: Lifecycle, kubectl: Kubectl, app_ns: str):
    """The three-tier sample reconciles to Ready with the operator holding only the chart's grants."""
    operator = lifecycle.procs["operator"]
    for secret, key in (("team-a-key", "sk-team-a-e2e"), ("batch-jobs-key", "sk-batch-e2e")):
        kubectl.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret, "namespace": app_ns},
                "stringData": {"api-key": key},
            }
        )
    lifecycle.sample = sample = _sample(app_ns)
    kubectl.apply(sample)
    name = sample["metadata"]["name"]
    ms = wait_until(
        lambda: _ready(kubectl, app_ns, name),
        f"ModelService {name} Ready under the chart's RBAC",
        timeout=120,
        describe=lambda: f"operator log:\n{operator.tail()}",
    )
    assert operator.alive(), operator.tail()
    assert ms["status"]["endpoint"] == f"http://kubetier-router.{CHART_NS}.svc:8080/v1", ms["status"]
    assert not operator.forbidden(), f"the operator was refused by RBAC:\n{operator.forbidden()[:5]}"


def test_streaming_completion_through_the_router(lifecycle: Lifecycle, api_client, app_ns: str):
    """The router, holding only the chart's read-only grants, discovers the sample and
    streams a completion from the (loopback) engines."""
    from kubetier.localdev.engines import LocalEngines, engine_sim_command

    assert lifecycle.sample, "needs test_sample_ready_under_the_chart_rbac"
    router = lifecycle.procs["router"]
    with LocalEngines(api_client, namespace=app_ns, command=engine_sim_command(time_scale=1.0)) as engines:
        engines.wait_for(lambda eps: len(eps) >= 5, timeout_s=90)
        text = _stream_completion(
            lifecycle.router_port,
            router,
            api_key="sk-team-a-e2e",
            tier="interactive",
            model=lifecycle.sample["spec"]["model"]["name"],
        )
    assert text, "the router streamed no tokens"
    assert not router.forbidden(), f"the router was refused by RBAC:\n{router.forbidden()[:5]}"


def test_upgrade_with_changed_values_converges(lifecycle: Lifecycle, kubectl: Kubectl, helm: Helm):
    helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        CHART_NS,
        "--reuse-values",
        "--set",
        "router.replicas=2",
        "--set",
        "operator.verbose=true",
    )
    assert kubectl.json("get", "deployment", f"{RELEASE}-kubetier-router", "-n", CHART_NS)["spec"]["replicas"] == 2
    assert "--verbose" in container(kubectl, f"{RELEASE}-kubetier-operator")["args"]
    pdb = kubectl.json("get", "pdb", f"{RELEASE}-kubetier-router", "-n", CHART_NS)
    assert pdb["spec"]["maxUnavailable"] == 1
    history = json.loads(helm("history", RELEASE, "-n", CHART_NS, "-o", "json"))
    assert (history[-1]["revision"], history[-1]["status"]) == (2, "deployed")
    bad = helm.run("upgrade", RELEASE, str(CHART), "-n", CHART_NS, "--reuse-values", "--set", "operator.replicas=0")
    assert bad.returncode != 0 and "/operator/replicas" in bad.stderr, bad.stderr
    assert json.loads(helm("history", RELEASE, "-n", CHART_NS, "-o", "json"))[-1]["revision"] == 2
    # Back to one router: the PodDisruptionBudget goes away again.
    helm("upgrade", RELEASE, str(CHART), "-n", CHART_NS, "--reuse-values", "--set", "router.replicas=1")
    assert not kubectl("get", "pdb", "-n", CHART_NS, "-l", INSTANCE, "-o", "name")


def _observed_generation(kubectl: Kubectl, namespace: str, name: str) -> int | None:
    ms = kubectl.json("get", "modelservice", name, "-n", namespace)
    return (ms.get("status") or {}).get("observedGeneration")


def test_operator_replicas_elect_one_through_kopf_peering(
    lifecycle: Lifecycle, kubectl: Kubectl, helm: Helm, app_ns: str
):
    """operator.replicas=2: a StatefulSet whose replicas run with --priority=<pod index>
    and the chart's peering object. Two replicas under the chart's identity: the lower
    one stands by (it does not touch a new ModelService), the higher one reconciles; when
    it stops, the other takes over and reconciles the next change."""
    helm("upgrade", RELEASE, str(CHART), "-n", CHART_NS, "--reuse-values", "--set", "operator.replicas=2")
    kubectl("get", "statefulset", f"{RELEASE}-kubetier-operator", "-n", CHART_NS)
    assert not kubectl(
        "get", "deployment", "-n", CHART_NS, "-l", f"{INSTANCE},app.kubernetes.io/component=operator", "-o", "name"
    )
    kubectl("get", "clusterkopfpeering", "kubetier")
    lifecycle.chart.stop()  # the standalone operator must not reconcile beside the peers
    chart = lifecycle.chart
    replicas = [chart.replica("operator", 0), chart.replica("operator", 1)]
    low, high = replicas
    try:

        def peers() -> dict:
            status = kubectl.json("get", "clusterkopfpeering", "kubetier").get("status") or {}
            return {ident: info.get("priority") for ident, info in status.items()}

        statefulset = f"{RELEASE}-kubetier-operator"
        wait_until(
            lambda: peers() == {f"{statefulset}-0": 0, f"{statefulset}-1": 1},
            "both replicas to register in the ClusterKopfPeering with priorities 0 and 1",
            timeout=60,
            describe=lambda: f"{peers()}\nreplica 0:\n{low.tail()}\nreplica 1:\n{high.tail()}",
        )
        probe = model_service("ha-probe", app_ns, [tier("batch", 5000, 150, 10, replicas=1)], gpus_per_replica=1)
        kubectl.apply(probe)
        wait_until(
            lambda: _observed_generation(kubectl, app_ns, "ha-probe") == 1,
            "the active replica to reconcile",
            timeout=60,
            describe=high.tail,
        )
        assert "ha-probe" in high.tail(500_000) and "ha-probe" not in low.tail(500_000)
        high.stop()
        wait_until(
            lambda: list(peers()) == [f"{statefulset}-0"],
            "replica 1 to leave the peering",
            timeout=30,
            describe=lambda: str(peers()),
        )
        kubectl(
            "patch",
            "modelservice",
            "ha-probe",
            "-n",
            app_ns,
            "--type=json",
            "-p",
            json.dumps([{"op": "replace", "path": "/spec/tiers/0/replicas/max", "value": 2}]),
        )
        wait_until(
            lambda: _observed_generation(kubectl, app_ns, "ha-probe") == 2,
            "replica 0 to reconcile",
            timeout=60,
            describe=low.tail,
        )
        assert not low.forbidden() and not high.forbidden(), (low.forbidden() + high.forbidden())[:5]
        kubectl("delete", "modelservice", "ha-probe", "-n", app_ns, "--wait=true", "--timeout=60s", timeout=90)
    finally:
        for r in replicas:
            r.stop()
        # Back to one replica and the standalone operator, whatever happened above.
        helm("upgrade", RELEASE, str(CHART), "-n", CHART_NS, "--reuse-values", "--set", "operator.replicas=1")
        chart.start()
    kubectl("get", "deployment", f"{RELEASE}-kubetier-operator", "-n", CHART_NS)
    assert not kubectl("get", "statefulsets", "-n", CHART_NS, "-l", INSTANCE, "-o", "name")
    assert not kubectl("get", "crd", "clusterkopfpeerings.kopf.dev", "--ignore-not-found", "-o", "name"), (
        "the peering CRDs outlived operator.replicas=1"
    )


def test_uninstall_keeps_only_crds_and_instances(lifecycle: Lifecycle, kubectl: Kubectl, helm: Helm, app_ns: str):
    """Documented policy: delete ModelServices first (their children go with them while
    the operator runs); `helm uninstall` then removes every object of the release and
    keeps the CRDs and any ModelService still there."""
    assert lifecycle.procs["operator"].alive(), lifecycle.procs["operator"].tail()
    kept = _sample(app_ns)
    kept["metadata"]["name"] = "kept"
    kept["spec"]["tiers"] = [t for t in kept["spec"]["tiers"] if t["name"] == "batch"]
    kept["spec"]["access"] = [{"secretRef": {"name": "batch-jobs-key"}, "tiers": ["batch"]}]
    kubectl.apply(kept)
    wait_until(lambda: _ready(kubectl, app_ns, "kept"), "ModelService kept Ready", timeout=90)
    name = lifecycle.sample.get("metadata", {}).get("name", "llama-8b")
    kubectl(
        "delete", "modelservice", name, "-n", app_ns, "--wait=true", "--timeout=60s", "--ignore-not-found", timeout=90
    )
    wait_until(
        lambda: (
            not kubectl(
                "get",
                "deployments,services,configmaps,pods",
                "-n",
                app_ns,
                "-l",
                f"kubetier.io/service={name}",
                "-o",
                "name",
            )
        ),
        f"the children of {name} to be garbage-collected",
        timeout=60,
    )
    for proc in lifecycle.procs.values():
        proc.stop()

    helm("uninstall", RELEASE, "-n", CHART_NS, "--wait", "--timeout=60s")
    wait_until(
        lambda: not _release_objects(kubectl),
        "every object of the release to be deleted",
        timeout=60,
        describe=lambda: str(_release_objects(kubectl)),
    )
    assert not kubectl("get", "secrets", "-n", CHART_NS, "-l", f"owner=helm,name={RELEASE}", "-o", "name")
    assert _crd_served(kubectl), "helm uninstall deleted the ModelService CRD (it must keep CRDs)"
    assert kubectl("get", "modelservice", "kept", "-n", app_ns, "-o", "name"), "uninstall removed a ModelService"


def _stream_completion(port: int, router, api_key: str, tier: str, model: str) -> str:
    """One streaming completion through the router; returns the streamed text."""
    import httpx

    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {"model": model, "prompt": "Say hello to the helm chart.", "max_tokens": 16, "stream": True}
    headers = {"Authorization": f"Bearer {api_key}", "X-Kubetier-Tier": tier}
    deadline = time.monotonic() + 60
    last = ""
    while time.monotonic() < deadline:
        assert router.alive(), f"the router exited:\n{router.tail()}"
        try:
            with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as resp:
                if resp.status_code == 200:
                    chunks = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
                    assert chunks and chunks[-1] == "[DONE]", chunks[-3:]
                    return "".join(json.loads(c)["choices"][0].get("text", "") for c in chunks[:-1])
                last = f"HTTP {resp.status_code}: {resp.read()[:300]!r}"
        except httpx.TransportError as exc:  # router still starting
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"no streaming completion through the router within 60s; last: {last}\n{router.tail()}")
