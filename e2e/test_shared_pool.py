"""A shared pool with dynamic bins on the local cluster, traffic through the router.

The operator (its own process, under its least-privilege ServiceAccount) renders a
ModelService with ``spec.sharedPool`` as one Deployment ``<name>-pool`` whose pods carry
``kubetier.io/pool=shared`` and no tier label, and a routing document listing each tier's
bin limits; KWOK pods get loopback engine simulators (kubetier.localdev.LocalEngines); a
real router discovers them (``--local-endpoints``). Checked:

1. the rendering: one pool Deployment, Service and PodDisruptionBudget, no per-tier
   workloads; the routing document's ``sharedPool``; the service becomes Ready 4/4;
2. the router puts the four pool servers in bins, two per tier (``/kubetier/status``);
3. traffic shifts from the batch tier to the interactive tier: a burst of interactive
   streams needs more than the two interactive servers hold, so idle batch servers move
   to the interactive bin (status: the servers' bins and ``binMoves``), the batch bin
   keeps its minimum of one server, every stream completes, and the interactive tier's
   attainment (router status, and ``status.tiers[].attainmentPercent`` as the operator
   reads it) meets its target.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from e2e_support import Kubectl, NamespacedStack, router_status, simulator_service, wait_until
from kubetier.localdev.processes import free_loopback_port as free_port
from openai_stream import count_streamed_tokens

SERVICE = "pool-e2e"
MODEL = "llama-3.1-8b-pool"
ENGINE_LOAD_S = 0  # see e2e/test_autoscale.py: KWOK marks pods Ready before a loopback engine loads
TOKENS = 200
INTERACTIVE = {
    "name": "interactive",
    "ttftMs": 2000,
    "tpotMs": 100,
    "priority": 100,
    "meanOutputTokens": TOKENS,
    "attainmentPercent": 90,
    "replicas": {"min": 1, "max": 3},
}
BATCH = {
    "name": "batch",
    "ttftMs": 30000,
    "tpotMs": 400,
    "priority": 10,
    "meanOutputTokens": TOKENS,
    "onLate": "queue",
    "replicas": {"min": 1, "max": 3},
}


def service(ns: str) -> dict:
    # maxNumSeqs 4: a dozen streams are more than two servers hold
    return simulator_service(
        SERVICE,
        ns,
        MODEL,
        [INTERACTIVE, BATCH],
        ["--model-load-seconds", str(ENGINE_LOAD_S)],
        max_num_seqs=4,
        sharedPool={"replicas": {"min": 4, "max": 4}},
    )


async def stream_one(client: httpx.AsyncClient, base: str, tier: str) -> tuple[int, int]:
    body = {"model": MODEL, "prompt": "hello " * 40, "max_tokens": TOKENS, "stream": True}
    return await count_streamed_tokens(client, base, tier, body)


async def traffic(base: str, tier: str, n: int) -> list[tuple[int, int]]:
    async with httpx.AsyncClient(timeout=180) as c:
        return await asyncio.gather(*(stream_one(c, base, tier) for _ in range(n)))


def bins(model_status: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in model_status.get("servers", []):
        out[s["tier"]] = out.get(s["tier"], 0) + 1
    return out


@pytest.mark.timeout(420)
def test_shared_pool_bins_move_with_traffic(kubectl: Kubectl, kubeconfig: str, crds, api_client, namespace):
    ns = namespace
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stack = NamespacedStack(kubectl, kubeconfig, ns, f"kubetier-pool-operator-{ns}", "kubetier-pool-")
    workdir = stack.workdir
    try:
        stack.start_operator(
            env={
                "KUBETIER_ROUTER_STATUS_URLS": f"{base}/kubetier/status",  # the autoscaler's
                "KUBETIER_ROUTER_STATUS_URL": f"{base}/kubetier/status",  # the attainment feed's
            }
        )
        stack.start_router(port, "router.log")
        stack.start_engines(api_client)
        kubectl.apply(service(ns))

        def ms() -> dict:
            return kubectl.json("get", "modelservice", SERVICE, "-n", ns)

        def ready():
            m = ms()
            conds = {c["type"]: c for c in (m.get("status") or {}).get("conditions") or ()}
            return m if conds.get("Ready", {}).get("status") == "True" else None

        m = wait_until(ready, "the pool service Ready", timeout=120,
                       describe=lambda: json.dumps(ms().get("status"))[:1500])  # fmt: skip
        assert m["status"]["replicaSummary"] == "4/4", m["status"]

        # 1. rendering: one pool workload, no per-tier workloads, pods without a tier label
        deployments = {d["metadata"]["name"] for d in kubectl.items("deployments", ns)}
        assert deployments == {f"{SERVICE}-pool"}, deployments
        assert {s["metadata"]["name"] for s in kubectl.items("services", ns)} == {f"{SERVICE}-pool"}
        assert {p["metadata"]["name"] for p in kubectl.items("poddisruptionbudgets", ns)} == {f"{SERVICE}-pool"}
        pods = kubectl.items("pods", ns, f"kubetier.io/service={SERVICE}")
        assert len(pods) == 4
        for p in pods:
            labels = p["metadata"]["labels"]
            assert labels.get("kubetier.io/pool") == "shared" and "kubetier.io/tier" not in labels, labels
        routing = json.loads(kubectl.json("get", "configmap", f"{SERVICE}-routing", "-n", ns)["data"]["routing.json"])
        assert routing["sharedPool"]["bins"] == [
            {"tier": "interactive", "minServers": 1, "maxServers": 3},
            {"tier": "batch", "minServers": 1, "maxServers": 3},
        ]

        # 2. the router bins the four pool servers two per tier
        def router_model() -> dict:
            return (router_status(base).get("models") or {}).get(MODEL) or {}

        def pool_ready():
            st = router_model()
            servers = st.get("servers", [])
            return st if len(servers) == 4 and all(s["ready"] and s["pooled"] for s in servers) else None

        st = wait_until(pool_ready, "the router to see four ready pool servers", timeout=90,
                        describe=lambda: json.dumps(router_model())[:1500])  # fmt: skip
        assert st["sharedPool"] is True
        assert bins(st) == {"interactive": 2, "batch": 2}, st["servers"]
        assert st["binMoves"] == 0

        # 3a. batch traffic: the batch bin serves it, nothing needs to move
        batch = asyncio.run(traffic(base, "batch", 6))
        assert all(r == (200, TOKENS) for r in batch), batch
        st = router_model()
        print(f"[shared pool e2e] after 6 batch streams: bins {bins(st)}, moves {st['binMoves']}")

        # 3b. the traffic shifts to the interactive tier: 12 streams at once, more than
        #     the two interactive servers (4 sequences each) hold
        before_moves = st["binMoves"]
        results = asyncio.run(traffic(base, "interactive", 12))
        st = router_model()
        (workdir / "router-after-shift.json").write_text(json.dumps(st, indent=2))
        print(
            f"[shared pool e2e] after 12 interactive streams: bins {bins(st)}, moves {st['binMoves']}, "
            f"interactive {st['tiers']['interactive']}"
        )
        assert all(r == (200, TOKENS) for r in results), results
        assert st["binMoves"] > before_moves, st
        assert bins(st) == {"interactive": 3, "batch": 1}, st["servers"]  # batch keeps its minimum
        att = st["tiers"]["interactive"]["attainmentPercent"]
        assert att is not None and att >= INTERACTIVE["attainmentPercent"], st["tiers"]

        # the operator reads the same attainment into the ModelService status
        def operator_attainment():
            t = next((t for t in ms()["status"].get("tiers", []) if t["name"] == "interactive"), {})
            return t.get("attainmentPercent")

        seen = wait_until(operator_attainment, "attainment in the ModelService status", timeout=60)
        assert seen >= INTERACTIVE["attainmentPercent"], seen
        print(kubectl("get", "modelservice", "-n", ns, check=False))
    finally:
        stack.close([SERVICE])
