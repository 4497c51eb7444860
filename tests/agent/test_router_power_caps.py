"""The router routes a server on a power-capped node with the capped latency model.

The cap reaches the router through the Node (``kubetier.io/power-cap`` from the
PowerBudget controller, ``kubetier.io/power-report`` from the node agent), the same path
for the NVML backend under a real vLLM as for the simulated one. Unit tests for the
parts, then a real router process with two real engine simulators on loopback,
discovering them through an HTTP Kubernetes API (tests/operator/fake_kube.py): with one
engine's node capped, interactive requests go to the uncapped one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kubetier.api.node_power import (
    POWER_CAP_ANNOTATION,
    POWER_REPORT_ANNOTATION,
    GpuPower,
    NodePowerReport,
    node_cap_fraction,
)
from kubetier.api.routing import RoutingDocument
from kubetier.localdev.processes import free_loopback_port, kubetier_command, start_process, stop_process
from kubetier.policy.latency import load_profile
from kubetier.policy.power_cap import capped_model
from kubetier.policy.routing import TierSLO
from kubetier.router.config import ModelSpec, ServerSpec
from kubetier.router.discovery import build_config, node_caps
from kubetier.router.fleet import ModelFleet
from kubetier.router.metrics import RouterMetrics

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "operator"))
from fake_kube import FakeKube  # noqa: E402

PROFILE = "llama-3.1-8b-h100"
MODEL = "capped-llama"
NS = "team-a"
# The profile's one-sequence decode step is 6.4 ms at 303 W; under a cap of 20 % of its
# 700 W (140 W) it stretches to 12.4 ms (kubetier.policy.power_cap). A 9 ms TPOT target
# is then met uncapped and missed capped, at any batch. A 60 % cap (420 W, the
# PowerBudget default) would not slow this profile's decode below batch ~40 at all: its
# decode draws less than that (303-372 W up to batch 16).
TPOT_MS = 9
DEEP_CAP_SHARE = 0.2
# Admission gives a request the TTFT its first token leaves unused, spread over its output
# (per-token deadlines, kubetier.policy.routing_feasibility): with a 2 s TTFT even the
# capped server meets every deadline of a short answer. A tight TTFT and longer answers
# leave about 1 ms of slack per token, so the per-token target decides.
TTFT_MS = 60
OUTPUT_TOKENS = 32


def report(node: str, max_watts: float, cap_watts: float | None) -> str:
    return NodePowerReport(
        node=node,
        backend="simulated",
        observed_at=time.time(),
        gpus=[GpuPower(index=0, watts=300.0, max_watts=max_watts, cap_watts=cap_watts)],
    ).model_dump_json(by_alias=True)


def node(name: str, cap_watts: float | None = None, applied: float | None = None, max_watts: float = 700.0) -> dict:
    ann = {POWER_REPORT_ANNOTATION: report(name, max_watts, applied)}
    if cap_watts is not None:
        ann[POWER_CAP_ANNOTATION] = str(int(cap_watts))
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": ann}}


# --------------------------------------------------------------------------- the parts


def test_cap_share_is_the_deeper_of_requested_and_applied():
    assert node_cap_fraction({}) is None
    assert node_cap_fraction(node("n")["metadata"]["annotations"]) is None
    # Requested, not yet applied: capped at once.
    assert node_cap_fraction(node("n", cap_watts=420)["metadata"]["annotations"]) == pytest.approx(0.6)
    # Lifted by the controller, the agent's report still shows it: still capped until it reports.
    assert node_cap_fraction(node("n", applied=315)["metadata"]["annotations"]) == pytest.approx(0.45)
    assert node_cap_fraction(node("n", cap_watts=420, applied=315)["metadata"]["annotations"]) == pytest.approx(0.45)
    # No readable report: the GPUs' maximum is unknown, so is the share.
    assert node_cap_fraction({POWER_CAP_ANNOTATION: "420"}) is None
    assert node_cap_fraction({POWER_REPORT_ANNOTATION: "{not json", POWER_CAP_ANNOTATION: "420"}) is None
    assert node_caps([node("a", cap_watts=420), node("b")]) == {"a": pytest.approx(0.6)}


def routing_configmap() -> dict:
    doc = RoutingDocument.model_validate(
        {
            "model": MODEL,
            "namespace": NS,
            "service": "chat",
            "port": 8000,
            "profile": load_profile(PROFILE).to_dict(),
            "tiers": [
                {
                    "name": "interactive",
                    "ttftMs": TTFT_MS,
                    "tpotMs": TPOT_MS,
                    "priority": 100,
                    "meanOutputTokens": OUTPUT_TOKENS,
                }
            ],
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "chat-routing", "namespace": NS, "labels": {"kubetier.io/routing-config": "true"}},
        "data": {"routing.json": doc.to_json()},
    }


def serving_pod(name: str, node_name: str, endpoint: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/managed-by": "kubetier",
                "kubetier.io/service": "chat",
                "kubetier.io/tier": "interactive",
                "kubetier.io/role": "serving",
            },
            "annotations": {"kubetier.io/local-endpoint": endpoint},
        },
        "spec": {"nodeName": node_name},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_discovery_marks_servers_on_capped_nodes():
    pods = [serving_pod("a", "node-a", "127.0.0.1:1"), serving_pod("b", "node-b", "127.0.0.1:2")]
    cfg = build_config(
        [routing_configmap()], pods, {}, True, node_caps([node("node-a", cap_watts=140), node("node-b")])
    )
    shares = {s.server_id: s.power_cap_fraction for s in cfg.models[MODEL].servers}
    assert shares == {f"{NS}/a": pytest.approx(DEEP_CAP_SHARE), f"{NS}/b": None}


def test_fleet_routes_a_capped_server_with_the_capped_model_and_keeps_its_load():
    profile = load_profile(PROFILE)
    tier = TierSLO("interactive", ttft_ms=TTFT_MS, tpot_ms=TPOT_MS, priority=100, mean_output_tokens=OUTPUT_TOKENS)
    spec = ModelSpec(MODEL, profile, [tier], [ServerSpec("a", "127.0.0.1", 9, "interactive")])
    fleet = ModelFleet(spec, RouterMetrics("test"))
    fleet.policy.on_admit("a", 100, 16)
    assert fleet.policy.server("a").model is profile
    fleet.set_servers([ServerSpec("a", "127.0.0.1", 9, "interactive", power_cap_fraction=DEEP_CAP_SHARE)])
    load = fleet.policy.server("a")
    assert load.model is capped_model(profile, DEEP_CAP_SHARE * profile.tdp_watts)
    assert load.running == 1 and load.kv_tokens == 100  # the cap changed the model, not the load
    assert fleet.model_status().servers[0].power_cap_watts == pytest.approx(140.0)
    # The capped server cannot meet the TPOT: the interactive request is not routed to it.
    assert fleet.policy.decide("interactive", 100, 0.0).action != "route"
    fleet.set_servers([ServerSpec("a", "127.0.0.1", 9, "interactive")])
    assert fleet.policy.server("a").model is profile
    assert fleet.policy.decide("interactive", 100, 0.0).action == "route"
    # A cap at or below idle cannot be modelled as a clock: the server counts as very slow.
    assert fleet.server_model(ServerSpec("a", "127.0.0.1", 9, "interactive", power_cap_fraction=0.05)).name.startswith(
        profile.name + "@cap"
    )


# --------------------------------------------------------------------------- real processes


def served_tokens(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("vllm:generation_tokens_total"):
            return float(line.rsplit(" ", 1)[-1])
    raise AssertionError("engine /metrics has no vllm:generation_tokens_total")


def wait_for(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.mark.timeout(120)
def test_router_sends_interactive_requests_to_the_uncapped_engine(tmp_path: Path):
    """Two engines, one tier. Uncapped, the router packs sequential requests onto one
    engine (most-loaded first, a fixed order among idle ones). Cap *that* engine's node
    (and the engine itself, as its agent would): every request goes to the other one.
    Lift the cap: back to the first. What moved them is only the Node's cap."""
    ports = {"a": free_loopback_port(), "b": free_loopback_port()}
    router_port = free_loopback_port()
    procs: list[subprocess.Popen] = []
    with FakeKube() as fake:
        fake.put(routing_configmap())
        for name in ("a", "b"):
            fake.put(node(f"node-{name}"))
            fake.put(serving_pod(name, f"node-{name}", f"127.0.0.1:{ports[name]}"))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        try:
            for name, port in ports.items():
                procs.append(
                    start_process(
                        kubetier_command(
                            "engine-sim", "--port", str(port), "--model", MODEL, "--profile", PROFILE,
                            "--log-level", "WARNING",
                        ),
                        tmp_path / f"engine-{name}.log",
                    )
                )  # fmt: skip
            procs.append(
                start_process(
                    kubetier_command(
                        "router", "--port", str(router_port), "--local-endpoints", "--scrape-interval", "0.2",
                        "--log-level", "INFO",
                    ),
                    tmp_path / "router.log",
                    env={"KUBECONFIG": str(kubeconfig)},
                )
            )  # fmt: skip
            base = f"http://127.0.0.1:{router_port}"

            def servers() -> dict[str, dict]:
                models = httpx.get(base + "/kubetier/status", timeout=2).json()["models"]
                return {s["id"].split("/")[-1]: s for s in models[MODEL]["servers"]}

            wait_for(lambda: len(servers()) == 2 and all(s["ready"] for s in servers().values()), "both engines ready")

            def send(n: int) -> dict[str, float]:
                before = {k: served_tokens(p) for k, p in ports.items()}
                with httpx.Client(base_url=base, timeout=30) as client:
                    for _ in range(n):
                        r = client.post(
                            "/v1/completions",
                            json={"model": MODEL, "prompt": "hello " * 8, "max_tokens": OUTPUT_TOKENS},
                            headers={"X-Kubetier-Tier": "interactive"},
                        )
                        assert r.status_code == 200, r.text
                return {k: served_tokens(p) - before[k] for k, p in ports.items()}

            first = send(6)
            preferred = max(first, key=lambda k: first[k])
            other = "b" if preferred == "a" else "a"
            assert first[preferred] == 6 * OUTPUT_TOKENS and first[other] == 0, first

            # The controller caps the preferred engine's node; its agent applies the cap.
            cap_w = DEEP_CAP_SHARE * 700.0
            r = httpx.put(f"http://127.0.0.1:{ports[preferred]}/admin/power-cap", json={"capWatts": cap_w}, timeout=5)
            assert r.status_code == 200, r.text
            fake.put(node(f"node-{preferred}", cap_watts=cap_w, applied=cap_w))
            wait_for(lambda: servers()[preferred].get("powerCapWatts") == pytest.approx(140.0), "router sees the cap")
            assert servers()[other].get("powerCapWatts") is None
            capped = send(6)
            assert capped == {preferred: 0, other: 6 * OUTPUT_TOKENS}, capped

            # Lifted (controller and agent): the preferred engine takes the requests again.
            httpx.put(f"http://127.0.0.1:{ports[preferred]}/admin/power-cap", json={"capWatts": None}, timeout=5)
            fake.put(node(f"node-{preferred}"))
            wait_for(lambda: servers()[preferred].get("powerCapWatts") is None, "router sees the cap lifted")
            lifted = send(6)
            assert lifted == {preferred: 6 * OUTPUT_TOKENS, other: 0}, lifted
            # The router read the caps from Node watch events (one list of Nodes, the rest watched).
            assert "routed as" in (tmp_path / "router.log").read_text()
        finally:
            for p in procs:
                stop_process(p)
