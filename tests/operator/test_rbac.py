"""kubetier.operator.rbac allows every request the reconcile makes, and no more than
the operator needs (checked by replaying a reconcile's recorded HTTP requests)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

from modelservice_builders import cluster_nodes, sample_body

from kubetier.kube import KubeClient
from kubetier.operator.identity import FIELD_MANAGER
from kubetier.operator.modelservice.model import OperatorConfig
from kubetier.operator.modelservice.reconcile import reconcile
from kubetier.operator.rbac import RULES, cluster_role


def allowed(group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in RULES)


def request_to_rbac(method: str, path: str, existed: bool) -> list[tuple[str, str, str]]:
    parts = [p for p in urlsplit(path).path.split("/") if p]
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    verb = {"GET": "get" if named else "list", "POST": "create", "DELETE": "delete", "PATCH": "patch"}[method]
    if method == "GET" and "watch=true" in path:
        verb = "watch"
    needed = [(group, resource, verb)]
    if method == "PATCH" and not existed and "/" not in resource:
        needed.append((group, resource, "create"))  # an apply that creates also needs create
    return needed


async def test_every_request_of_a_reconcile_is_allowed(fake_kube):
    for node in cluster_nodes():
        fake_kube.put(node)
    body = sample_body()
    fake_kube.put(body)
    api = KubeClient.for_url(fake_kube.url, field_manager=FIELD_MANAGER)
    try:
        await reconcile(
            api,
            fake_kube.get("ModelService", "default", "llama-8b"),
            OperatorConfig(),
            dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        )
        first = list(fake_kube.requests)
        fake_kube.reset_requests()
        body = fake_kube.get("ModelService", "default", "llama-8b")
        body["spec"]["tiers"][0]["prewarm"]["standby"] = 0  # forces a prune (DELETE)
        fake_kube.objects[("ModelService", "default", "llama-8b")] = body
        await reconcile(api, body, OperatorConfig(), dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
        second = list(fake_kube.requests)
    finally:
        await api.aclose()
    verbs_seen = set()
    for i, (method, path) in enumerate(first + second):
        for need in request_to_rbac(method, path, existed=i >= len(first)):
            assert allowed(*need), f"{method} {path} needs {need}, which rbac.RULES lacks"
            verbs_seen.add(need)
    assert ("apps", "deployments", "delete") in verbs_seen and ("", "events", "create") in verbs_seen


async def test_every_request_of_the_controller_is_allowed(fake_kube):
    """The long-lived controller: its watches (children, pods, nodes, ModelServices, the
    router's EndpointSlices) and its reconciles."""
    import asyncio

    from kubetier.operator.modelservice.controller import ModelServiceController

    for node in cluster_nodes():
        fake_kube.put(node)
    fake_kube.put(sample_body())
    api = KubeClient.for_url(fake_kube.url, field_manager=FIELD_MANAGER)
    config = OperatorConfig(router_status_url="http://kubetier-router.kubetier-system.svc:8080/kubetier/status")
    controller = ModelServiceController(api, config, router_poll_s=60)
    try:
        await controller.reconcile(fake_kube.get("ModelService", "default", "llama-8b"))
        await asyncio.sleep(0.3)  # the feed's EndpointSlice watch opens
    finally:
        await controller.stop()
        await api.aclose()
    needs = {need for method, path in fake_kube.requests for need in request_to_rbac(method, path, existed=False)}
    for need in needs:
        assert allowed(*need), f"{need} is not in rbac.RULES"
    for watched in ("deployments", "pods", "nodes", "configmaps", "services", "poddisruptionbudgets"):
        assert any(r == watched and v == "watch" for _g, r, v in needs), f"no watch on {watched}"
    assert ("discovery.k8s.io", "endpointslices", "watch") in needs


def test_least_privilege():
    for rule in RULES:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        # the operator never reads or writes Secrets (the router does), nor escalates RBAC
        assert "secrets" not in rule["resources"]
        assert not {"rbac.authorization.k8s.io"} & set(rule["apiGroups"])
    # Nodes are never written; pods are deleted only by the spot controller, on a noticed
    # node (a replacement starts at once), and Secrets are never touched.
    assert not allowed("", "nodes", "patch") and not allowed("", "nodes", "delete")
    assert allowed("", "pods", "delete") and not allowed("", "pods", "create")
    # kopf's own needs
    assert allowed("kubetier.io", "modelservices", "watch") and allowed("kubetier.io", "modelservices", "patch")
    assert allowed("apiextensions.k8s.io", "customresourcedefinitions", "watch")
    assert cluster_role()["rules"] == RULES


def test_kopf_settings_keep_deletes_prompt_and_bookkeeping_under_our_domain():
    import kopf

    from kubetier.operator.runtime import configure_settings

    settings = kopf.OperatorSettings()
    configure_settings(settings)
    assert settings.persistence.finalizer == "kubetier.io/finalizer"
    # A timer caught mid-run on deletion is re-checked after this: it bounds how long
    # `kubectl delete ms` waits on the finalizer.
    assert settings.background.cancellation_polling <= 2
