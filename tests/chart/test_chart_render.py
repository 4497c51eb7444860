"""`helm template` over a matrix of values files: valid ones render objects with the
properties the chart promises; invalid ones fail with the message their first line
names (`# expect: <substring>`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chart_support import CHART, NAMESPACE, RELEASE, VALUES_DIR, RenderError, by_kind, one

OK_VALUES = sorted(VALUES_DIR.glob("ok-*.yaml"))
BAD_VALUES = sorted(VALUES_DIR.glob("bad-*.yaml"))
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be `# expect: <substring>`"
    return first.removeprefix("# expect: ").strip()


def pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objs if o["kind"] in WORKLOAD_KINDS]


def test_matrix_has_failing_cases():
    assert len(BAD_VALUES) >= 5


@pytest.mark.parametrize("values_file", BAD_VALUES, ids=lambda p: p.stem)
def test_bad_values_fail_with_named_message(render, values_file):
    want = expected_message(values_file)
    with pytest.raises(RenderError) as err:
        render(values_file)
    assert want in str(err.value), f"{values_file.name}: wanted {want!r} in:\n{err.value}"


@pytest.mark.parametrize("values_file", OK_VALUES, ids=lambda p: p.stem)
def test_ok_values_render_restricted_pods(render, values_file):
    """PodSecurity `restricted`: non-root, seccomp RuntimeDefault, no privilege escalation,
    all capabilities dropped, read-only root filesystem; plus requests and probes."""
    objs = render(values_file)
    specs = pod_specs(objs)
    assert specs, f"{values_file.name} rendered no workload"
    for name, spec in specs:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, name
        assert spec["serviceAccountName"] != "default", name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, f"{name}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, f"{name}/{c['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"], f"{name}/{c['name']}"
            assert sc.get("privileged") is not True, f"{name}/{c['name']}"
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], f"{name}/{c['name']}"
            if not name.endswith("node-agent"):
                assert "livenessProbe" in c and "readinessProbe" in c, f"{name}/{c['name']} has no probes"
        for v in spec.get("volumes", []):
            assert set(v) & {"emptyDir", "configMap", "secret", "projected", "downwardAPI"}, f"{name}: volume {v}"


@pytest.mark.parametrize("values_file", OK_VALUES, ids=lambda p: p.stem)
def test_every_object_is_labelled_and_namespaced(render, values_file):
    objs = render(values_file)
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "ClusterKopfPeering",
        "Namespace",
    }
    for o in objs:
        labels = o["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/instance") == RELEASE, f"{o['kind']} {o['metadata']['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "kubetier"
        if o["kind"] not in cluster_scoped:
            assert o["metadata"].get("namespace"), f"{o['kind']} {o['metadata']['name']} has no namespace"


def test_defaults(render):
    objs = render()
    kinds = sorted({o["kind"] for o in objs})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"], kinds
    op = one(objs, "Deployment", "kt-kubetier-operator")
    assert op["spec"]["replicas"] == 1
    assert op["spec"]["strategy"]["type"] == "Recreate"
    c = op["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "ghcr.io/kubetier/kubetier:0.1.0"
    assert c["command"] == ["kubetier", "operator"]
    assert c["args"] == [
        "--all-namespaces",
        "--standalone",
        "--liveness=http://0.0.0.0:8081/healthz",
        "--metrics-port=8082",
        "--metrics-bind-address=0.0.0.0",
    ]
    assert "POD_INDEX" not in {e["name"] for e in c["env"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    # status.endpoint = http://<service>.<namespace>.svc:<port>/v1
    assert (env["KUBETIER_ROUTER_SERVICE"], env["KUBETIER_ROUTER_NAMESPACE"], env["KUBETIER_ROUTER_PORT"]) == (
        "kubetier-router",
        NAMESPACE,
        "8080",
    )
    assert env["KUBETIER_SIMULATOR_IMAGE"] == c["image"]
    # The router's admin endpoints are on their own port by default: the operator reads status there.
    assert env["KUBETIER_ROUTER_STATUS_URL"] == f"http://kubetier-router.{NAMESPACE}.svc:9090/kubetier/status"
    assert c["livenessProbe"]["httpGet"]["port"] == "health" and c["ports"][0]["containerPort"] == 8081
    svc = one(objs, "Service", "kubetier-router")
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("http", 8080, "http"),
        ("admin", 9090, "admin"),
    ]
    router = one(objs, "Deployment", "kt-kubetier-router")
    assert router["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    rc = router["spec"]["template"]["spec"]["containers"][0]
    assert "--admin-port=9090" in rc["args"]
    assert {p["name"]: p["containerPort"] for p in rc["ports"]} == {"http": 8080, "admin": 9090}
    assert router["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert not by_kind(objs, "DaemonSet") and not by_kind(objs, "NetworkPolicy")
    assert not by_kind(objs, "CustomResourceDefinition"), "kubetier CRDs belong in crds/, not templates/"


def test_ha(render):
    objs = render(VALUES_DIR / "ok-ha.yaml")
    assert not [d for d in by_kind(objs, "Deployment") if "operator" in d["metadata"]["name"]]
    op = one(objs, "StatefulSet", "kt-kubetier-operator")
    assert op["spec"]["replicas"] == 2 and op["spec"]["podManagementPolicy"] == "Parallel"
    c = op["spec"]["template"]["spec"]["containers"][0]
    assert "--peering=kubetier" in c["args"] and "--standalone" not in c["args"]
    # A distinct kopf priority per replica: its pod index, expanded by the kubelet.
    assert "--priority=$(POD_INDEX)" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert "POD_ID" in env
    peering = one(objs, "ClusterKopfPeering", "kubetier")
    assert "post-install" in peering["metadata"]["annotations"]["helm.sh/hook"]
    assert {c["metadata"]["name"] for c in by_kind(objs, "CustomResourceDefinition")} == {
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    router = one(objs, "Deployment", "kt-kubetier-router")
    assert router["spec"]["replicas"] == 3
    rc = router["spec"]["template"]["spec"]["containers"][0]
    assert rc["image"].startswith("ghcr.io/kubetier/kubetier@sha256:")
    assert {t["topologyKey"] for t in router["spec"]["template"]["spec"]["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    pdb = one(objs, "PodDisruptionBudget", "kt-kubetier-router")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == router["spec"]["selector"]


def test_ha_in_namespaced_mode_uses_kopfpeerings(render):
    objs = render(VALUES_DIR / "ok-watch-namespaces.yaml", "operator.replicas=3")
    assert sorted(p["metadata"]["namespace"] for p in by_kind(objs, "KopfPeering")) == ["team-a", "team-b"]
    assert not by_kind(objs, "ClusterKopfPeering")


def test_watch_namespaces_uses_roles(render):
    objs = render(VALUES_DIR / "ok-watch-namespaces.yaml")
    roles = by_kind(objs, "Role")
    assert sorted((r["metadata"]["namespace"], r["metadata"]["name"]) for r in roles) == [
        ("team-a", "kt-kubetier-operator"),
        ("team-b", "kt-kubetier-operator"),
    ]
    assert len(by_kind(objs, "RoleBinding")) == 2
    assert [r["metadata"]["name"] for r in by_kind(objs, "ClusterRole")] == ["kt-kubetier-operator"]
    op = one(objs, "Deployment", "kt-kubetier-operator")
    args = op["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    assert "--verbose" in args


def test_one_namespace_scopes_the_router_too(render):
    objs = render(VALUES_DIR / "ok-one-namespace.yaml")
    assert sorted((r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(objs, "Role")) == [
        ("team-a", "kt-kubetier-operator"),
        ("team-a", "kt-kubetier-router"),
    ]
    # Cluster-wide, the router needs only to read Nodes (power caps), in namespaced mode too.
    assert [r["metadata"]["name"] for r in by_kind(objs, "ClusterRole")] == [
        "kt-kubetier-operator",
        "kt-kubetier-router",
    ]
    assert one(objs, "ClusterRole", "kt-kubetier-router")["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}
    ]
    router = one(objs, "Deployment", "kt-kubetier-router")
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--log-level=DEBUG" in args


def test_observability_and_network_policy(render):
    objs = render(VALUES_DIR / "ok-observability.yaml")
    monitors = by_kind(objs, "ServiceMonitor")
    assert [m["metadata"]["name"] for m in monitors] == ["kt-kubetier-router"]
    for m in monitors:
        assert m["metadata"]["labels"]["release"] == "prometheus"
        sel = m["spec"]["selector"]["matchLabels"]
        svc = [s for s in by_kind(objs, "Service") if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        assert len(svc) == 1 and svc[0]["spec"]["ports"][0]["name"] == "metrics", m["metadata"]["name"]
    for d in by_kind(objs, "Deployment"):
        assert "prometheus.io/scrape" not in (d["spec"]["template"]["metadata"].get("annotations") or {})
    router_np = one(objs, "NetworkPolicy", "kt-kubetier-router")
    client_rule, admin_rule = router_np["spec"]["ingress"]
    assert client_rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert client_rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubetier.io/clients": "true"}}}]
    # The admin port: Prometheus and the operator only (not the router's clients).
    assert admin_rule["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in admin_rule["from"]
    operator_peer = [p for p in admin_rule["from"] if "podSelector" in p]
    assert operator_peer and operator_peer[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert {"namespaceSelector": {"matchLabels": {"kubetier.io/clients": "true"}}} not in admin_rule["from"]
    headless = one(objs, "Service", "kt-kubetier-router-metrics")
    assert (headless["spec"]["ports"][0]["port"], headless["spec"]["ports"][0]["targetPort"]) == (9090, "admin")
    op_np = one(objs, "NetworkPolicy", "kt-kubetier-operator")
    # The operator admits only Prometheus (metricsClients), only on its metrics port.
    assert op_np["spec"]["policyTypes"] == ["Ingress"]
    assert op_np["spec"]["ingress"] == [
        {
            "ports": [{"port": 8082, "protocol": "TCP"}],
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        }
    ]
    assert not by_kind(objs, "DaemonSet")  # the node agent stays off until it exists


def test_admin_port_zero_keeps_the_admin_endpoints_on_the_client_port(render):
    """router.adminPort=0: the old wiring (status and scrapes on the client port)."""
    objs = render(None, "router.adminPort=0", "networkPolicy.enabled=true")
    op = one(objs, "Deployment", "kt-kubetier-operator")
    env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETIER_ROUTER_STATUS_URL"] == f"http://kubetier-router.{NAMESPACE}.svc:8080/kubetier/status"
    router = one(objs, "Deployment", "kt-kubetier-router")
    rc = router["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--admin-port") for a in rc["args"])
    assert [p["name"] for p in one(objs, "Service", "kubetier-router")["spec"]["ports"]] == ["http"]
    assert len(one(objs, "NetworkPolicy", "kt-kubetier-router")["spec"]["ingress"]) == 1


def test_network_policy_without_clients_admits_any_source(render):
    objs = render(None, "networkPolicy.enabled=true")
    np = one(objs, "NetworkPolicy", "kt-kubetier-router")
    assert "from" not in np["spec"]["ingress"][0]


def test_operator_only(render):
    objs = render(VALUES_DIR / "ok-operator-only.yaml")
    assert [d["metadata"]["name"] for d in by_kind(objs, "Deployment")] == ["kt-kubetier-operator"]
    assert not [o for o in objs if "router" in o["metadata"]["name"]]
    assert all(o["metadata"]["labels"]["team"] == "platform" for o in objs)


def test_values_yaml_documents_every_top_level_key():
    """values.yaml and values.schema.json describe the same top-level keys."""
    import json

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"]), set(values) - set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_chart_crds_are_the_generated_ones():
    """CRDs ship in the chart's crds/ folder, byte-identical to `kubetier crds` output
    (`make generate` writes both; `make verify` diffs them)."""
    from kubetier.api import crdgen

    want = {crdgen.file_name(c): crdgen.render(c) for c in crdgen.all_crds()}
    have = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert set(have) == set(want), "charts/kubetier/crds drifted: run `make generate`"
    for name, text in want.items():
        assert have[name] == text, f"charts/kubetier/crds/{name} drifted: run `make generate`"
