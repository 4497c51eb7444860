"""The admission policies in policies/ on a real API server: for each guard-rail, objects
that must pass and objects that must be rejected, with the rejection naming the rule.

The policies are applied exactly as shipped; only their bindings are narrowed to the
namespaces of this run (an extra namespace-label requirement), so the rest of the suite,
which runs on the same cluster, never meets them.
"""

from __future__ import annotations

import copy
import json
import time
import uuid

import pytest
import yaml

from e2e_support import REPO, Kubectl, model_service, tier, wait_until

POLICY_FILES = sorted((REPO / "policies").glob("*.yaml"))
RUN_LABEL = "kubetier.io/policy-e2e"
LABELS = {"team": "search", "cost-centre": "cc-1234"}


def _policy_docs() -> list[dict]:
    docs: list[dict] = []
    for f in POLICY_FILES:
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def scoped_binding(binding: dict, run: str) -> dict:
    """The shipped binding, renamed, additionally requiring the run's namespace label."""
    b = copy.deepcopy(binding)
    b["metadata"]["name"] = f"{binding['metadata']['name']}-e2e-{run}"
    sel = b["spec"].setdefault("matchResources", {}).setdefault("namespaceSelector", {})
    sel.setdefault("matchExpressions", []).append({"key": RUN_LABEL, "operator": "In", "values": [run]})
    return b


@pytest.fixture(scope="module")
def policies(kubectl: Kubectl, crds) -> dict:
    run = uuid.uuid4().hex[:6]
    docs = _policy_docs()
    objs = [scoped_binding(d, run) if d["kind"] == "ValidatingAdmissionPolicyBinding" else d for d in docs]
    kubectl.apply(objs)
    names = [d["metadata"]["name"] for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    bindings = [o["metadata"]["name"] for o in objs if o["kind"] == "ValidatingAdmissionPolicyBinding"]
    yield {"run": run, "policies": names, "bindings": bindings}
    kubectl("delete", "validatingadmissionpolicybinding", *bindings, "--ignore-not-found", check=False)
    kubectl("delete", "validatingadmissionpolicy", *names, "--ignore-not-found", check=False)


@pytest.fixture
def policy_ns(kubectl: Kubectl, namespace: str, policies: dict):
    """A fresh namespace that this run's bindings select; label it further per test."""

    def label(labels: dict[str, str] | None = None) -> str:
        if labels:
            kubectl("label", "namespace", namespace, "--overwrite", *[f"{k}={v}" for k, v in labels.items()])
            # Admission reads namespace labels from the API server's informer cache.
            time.sleep(1.0)
        return namespace

    kubectl("label", "namespace", namespace, f"{RUN_LABEL}={policies['run']}")
    _wait_active(kubectl, namespace)
    return label


def _wait_active(kubectl: Kubectl, namespace: str) -> None:
    """Bindings take effect asynchronously: wait until an unlabelled object is refused."""
    probe = ms("policy-probe", namespace, labels={})
    wait_until(
        lambda: "kubetier-required-labels" in create(kubectl, probe).stderr,
        "the admission policies to take effect",
        timeout=30,
        interval=0.5,
    )


def ms(name: str, namespace: str, tiers: list[dict] | None = None, gpus: int = 1, labels: dict | None = None) -> dict:
    obj = model_service(
        name,
        namespace,
        tiers
        or [
            tier("standard", 1000, 60, 50, replicas=1, max_replicas=2, spot="allowed"),
            tier("batch", 5000, 150, 10, replicas=1, max_replicas=2, spot="preferred"),
        ],
        gpus_per_replica=gpus,
    )
    obj["metadata"]["labels"] = dict(LABELS if labels is None else labels)
    return obj


def create(kubectl: Kubectl, obj: dict, dry_run: bool = True):
    args = ["create", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    return kubectl.run(*args, input=json.dumps(obj))


def assert_allowed(kubectl: Kubectl, obj: dict, dry_run: bool = True) -> None:
    res = create(kubectl, obj, dry_run)
    assert res.returncode == 0, f"{obj['metadata']['name']} was rejected:\n{res.stderr}"


def assert_rejected(kubectl: Kubectl, obj: dict, *fragments: str) -> str:
    res = create(kubectl, obj)
    assert res.returncode != 0, f"{obj['metadata']['name']} was ACCEPTED; expected {fragments}"
    for f in fragments:
        assert f in res.stderr, f"rejection does not mention {f!r}:\n{res.stderr}"
    return res.stderr


# --------------------------------------------------------------------------- all


def test_policies_type_check_against_the_crd(kubectl: Kubectl, policies: dict):
    """The API server type-checks each policy's validations against the ModelService
    schema and reports unknown fields in status.typeChecking (v1.34 does not check
    `variables`; tests/policies checks those field paths statically)."""

    def checked():
        out = {}
        for name in policies["policies"]:
            p = kubectl.json("get", "validatingadmissionpolicy", name)
            st = p.get("status") or {}
            if st.get("observedGeneration") != p["metadata"]["generation"]:
                return None
            out[name] = (st.get("typeChecking") or {}).get("expressionWarnings") or []
        return out

    warnings = wait_until(checked, "type checking of every policy", timeout=30)
    assert warnings == {n: [] for n in policies["policies"]}, warnings


# --------------------------------------------------------------------------- gpu cap


def test_gpu_cap(kubectl: Kubectl, policy_ns):
    ns = policy_ns({"kubetier.io/max-gpus": "8"})
    # 2 GPUs per replica x (2 + 2) max replicas = 8: at the cap, created for real.
    assert_allowed(kubectl, ms("at-cap", ns, gpus=2), dry_run=False)
    # Standby replicas count too: 2 x (2 + 2 + 1) = 10.
    over = ms("over-cap", ns, gpus=2)
    over["spec"]["tiers"][0]["prewarm"] = {"standby": 1}
    assert_rejected(kubectl, over, "kubetier-gpu-cap", "up to 10 GPUs", "kubetier.io/max-gpus=8")
    big = ms("big", ns, gpus=8, tiers=[tier("batch", 5000, 150, 10, replicas=1, max_replicas=2, spot="allowed")])
    assert_rejected(kubectl, big, "kubetier-gpu-cap", "up to 16 GPUs", "spec.resources.gpusPerReplica 8")


def test_gpu_cap_label_must_be_a_number(kubectl: Kubectl, policy_ns):
    ns = policy_ns({"kubetier.io/max-gpus": "lots"})
    stderr = assert_rejected(kubectl, ms("any", ns), "kubetier-gpu-cap")
    assert "kubetier.io/max-gpus=lots is not a whole number" in stderr, stderr


def test_no_gpu_cap_without_the_label(kubectl: Kubectl, policy_ns):
    ns = policy_ns()
    res = create(kubectl, ms("huge", ns, gpus=16, tiers=[tier("batch", 5000, 150, 10, replicas=1, max_replicas=100)]))
    assert res.returncode == 0, f"1,600 GPUs without a max-gpus label were rejected:\n{res.stderr}"


# --------------------------------------------------------------------------- tight tiers


def tight_tiers() -> list[dict]:
    return [tier("realtime", 200, 20, 100, replicas=1), tier("batch", 5000, 150, 10, replicas=1)]


def test_tight_tier_needs_a_labelled_namespace(kubectl: Kubectl, policy_ns):
    ns = policy_ns()
    assert_rejected(
        kubectl,
        ms("tight", ns, tight_tiers()),
        "kubetier-tight-tiers",
        "spec.tiers realtime (tpotMs 20)",
        "below 25 ms",
        "kubetier.io/tight-tiers-allowed=true",
    )
    # At the threshold is not below it.
    at = tight_tiers()
    at[0]["tpotMs"] = 25
    assert_allowed(kubectl, ms("at-threshold", ns, at))
    policy_ns({"kubetier.io/tight-tiers-allowed": "true"})
    wait_until(
        lambda: create(kubectl, ms("tight", ns, tight_tiers())).returncode == 0,
        "the tight tier to be admitted once the namespace is labelled",
        timeout=15,
    )


def _set_threshold(kubectl: Kubectl, ms_per_token: int) -> None:
    policy = kubectl.json("get", "validatingadmissionpolicy", "kubetier-tight-tiers")
    index = [v["name"] for v in policy["spec"]["variables"]].index("tightTierTpotMs")
    kubectl(
        "patch",
        "validatingadmissionpolicy",
        "kubetier-tight-tiers",
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": f"/spec/variables/{index}/expression", "value": str(ms_per_token)}]),
    )


def test_tight_tier_threshold_is_the_policy_variable(kubectl: Kubectl, policy_ns):
    ns = policy_ns()
    _set_threshold(kubectl, 15)
    try:
        wait_until(
            lambda: create(kubectl, ms("tight", ns, tight_tiers())).returncode == 0,
            "tpotMs 20 to be admitted under a 15 ms threshold",
            timeout=15,
            describe=lambda: create(kubectl, ms("tight", ns, tight_tiers())).stderr,
        )
    finally:
        _set_threshold(kubectl, 25)
    wait_until(
        lambda: "below 25 ms" in create(kubectl, ms("tight", ns, tight_tiers())).stderr,
        "the 25 ms threshold to be back",
        timeout=15,
    )
    back = create(kubectl, ms("tight", ns, tight_tiers()))
    assert back.returncode != 0 and "below 25 ms" in back.stderr, back.stderr


# --------------------------------------------------------------------------- spot only


def test_spot_only_namespace(kubectl: Kubectl, policy_ns):
    ns = policy_ns({"kubetier.io/spot-only": "true"})
    assert_allowed(kubectl, ms("all-spot", ns), dry_run=False)
    on_demand = ms(
        "on-demand",
        ns,
        [
            tier("interactive", 300, 30, 100, replicas=1, spot="never"),
            tier("batch", 5000, 150, 10, replicas=1, spot="preferred"),
        ],
    )
    assert_rejected(kubectl, on_demand, "kubetier-spot-only", "spec.tiers interactive", "capacity.spot")
    floor = ms("floor", ns, [tier("standard", 1000, 60, 50, replicas=2, spot="allowed", on_demand_floor=1)])
    assert_rejected(kubectl, floor, "kubetier-spot-only", "spec.tiers standard", "capacity.onDemandFloor to 0")
    # capacity omitted: the CRD default is spot: never.
    defaulted = ms("defaulted", ns, [{"name": "batch", "ttftMs": 5000, "tpotMs": 150}])
    assert_rejected(kubectl, defaulted, "kubetier-spot-only", "spec.tiers batch")


def test_metadata_updates_pass_spec_updates_are_checked(kubectl: Kubectl, policy_ns):
    """A ModelService admitted before its namespace became spot-only keeps reconciling
    (the operator's finalizer/annotation patches pass), but a spec edit must comply."""
    ns = policy_ns()
    obj = ms("legacy", ns, [tier("interactive", 300, 30, 100, replicas=1, spot="never")])
    assert_allowed(kubectl, obj, dry_run=False)
    policy_ns({"kubetier.io/spot-only": "true"})
    wait_until(
        lambda: create(kubectl, ms("probe", ns, obj["spec"]["tiers"])).returncode != 0,
        "spot-only to apply to the namespace",
        timeout=15,
    )
    res = kubectl.run("annotate", "modelservice", "legacy", "-n", ns, "example.com/touched=yes")
    assert res.returncode == 0, f"a metadata-only update was refused:\n{res.stderr}"
    res = kubectl.run(
        "patch",
        "modelservice",
        "legacy",
        "-n",
        ns,
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": "/spec/tiers/0/replicas/max", "value": 2}]),
    )
    assert res.returncode != 0 and "kubetier-spot-only" in res.stderr, res.stderr


# --------------------------------------------------------------------------- required labels


def test_required_labels(kubectl: Kubectl, policy_ns):
    ns = policy_ns()
    assert_allowed(kubectl, ms("labelled", ns))
    assert_rejected(
        kubectl, ms("no-cc", ns, labels={"team": "search"}), "kubetier-required-labels", "metadata.labels cost-centre"
    )
    assert_rejected(kubectl, ms("none", ns, labels={}), "kubetier-required-labels", "team, cost-centre")
    assert_rejected(
        kubectl,
        ms("empty", ns, labels={"team": "", "cost-centre": "cc-1"}),
        "kubetier-required-labels",
        "metadata.labels team",
    )


def test_required_labels_exempt_namespace(kubectl: Kubectl, policy_ns):
    ns = policy_ns({"kubetier.io/required-labels-exempt": "true"})
    wait_until(
        lambda: create(kubectl, ms("sandbox", ns, labels={})).returncode == 0,
        "an exempt namespace to admit an unlabelled ModelService",
        timeout=15,
    )
    admitted = create(kubectl, ms("sandbox", ns, labels={}))
    assert admitted.returncode == 0, admitted.stderr


def test_removing_a_required_label_is_rejected(kubectl: Kubectl, policy_ns):
    ns = policy_ns()
    assert_allowed(kubectl, ms("keep", ns), dry_run=False)
    res = kubectl.run("label", "modelservice", "keep", "-n", ns, "cost-centre-")
    assert res.returncode != 0 and "kubetier-required-labels" in res.stderr, res.stderr
