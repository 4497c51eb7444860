"""Standby promotion and the routers' demand push, operator side: rendering (sleep mode,
Deployment sized desired minus promoted), promotability, and the I/O against a real
engine simulator and a real router on loopback (the Kubernetes writes go to a recorder
here; e2e/test_autoscale.py runs them against a real apiserver)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
from modelservice_builders import parse, sample_body

from kubetier.engine_sim.app import EngineSimulator, SimConfig
from kubetier.lean_http import port_of, start_server
from kubetier.operator.modelservice.autoscale_feed import server_states
from kubetier.operator.modelservice.autoscale_push import DemandFollower, demand_url, held_models
from kubetier.operator.modelservice.autoscale_standby import promote, sleep_standbys
from kubetier.operator.modelservice.autoscale_standby_spec import (
    ASLEEP_ANNOTATION,
    promoted_serving,
    promotion_patch,
)
from kubetier.operator.modelservice.desired import desired, owner_reference
from kubetier.operator.modelservice.model import Observed, OperatorConfig
from kubetier.policy.latency import load_profile
from kubetier.router.app import Router
from kubetier.router.config import parse_config


def pod(name: str, role: str, tier: str = "interactive", pool: str = "main", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "labels": {"kubetier.io/role": role, "kubetier.io/tier": tier, "kubetier.io/pool": pool},
        "annotations": extra.pop("annotations", {}),
        "creationTimestamp": "2026-01-02T00:00:00Z",
    }
    meta.update(extra)
    return {"metadata": meta, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


def deployments(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}


def test_standby_engine_runs_with_sleep_mode_and_serving_does_not():
    ms = parse(sample_body())
    deps = deployments(desired(ms, Observed(), OperatorConfig()))
    standby = deps["llama-8b-interactive-standby"]["spec"]["template"]["spec"]["containers"][0]
    serving = deps["llama-8b-interactive"]["spec"]["template"]["spec"]["containers"][0]
    assert "--enable-sleep-mode" in standby["command"] and "--enable-sleep-mode" not in serving["command"]
    assert {"name": "VLLM_SERVER_DEV_MODE", "value": "1"} in standby["env"]  # vLLM serves /sleep only then


def test_serving_deployment_runs_desired_minus_promoted_pods():
    ms = parse(sample_body())
    pods = [
        pod("p1", "serving", pool="promoted"),
        pod("p2", "serving", pool="promoted", deletionTimestamp="2026-01-02T00:01:00Z"),  # leaving: not counted
        pod("p3", "serving", tier="standard", pool="promoted"),
        pod("s1", "standby", pool="standby"),
    ]
    assert promoted_serving(pods, "interactive") == 1
    deps = deployments(desired(ms, Observed(pods=pods), OperatorConfig(), {"interactive": 4, "standard": 3}))
    assert deps["llama-8b-interactive"]["spec"]["replicas"] == 4 - 1
    # standard has an on-demand floor: the promoted pod comes off the main pool only
    assert deps["llama-8b-standard-floor"]["spec"]["replicas"] == 1
    assert deps["llama-8b-standard"]["spec"]["replicas"] == 3 - 1 - 1
    assert deps["llama-8b-interactive-standby"]["spec"]["replicas"] == 1  # the replacement


def test_a_standby_is_promotable_only_once_loaded_and_asleep():
    states = server_states(
        [pod("s1", "standby", pool="standby"), pod("s2", "standby", pool="standby", annotations={ASLEEP_ANNOTATION: "level1"})],
        {},
        1000,
    )  # fmt: skip
    assert [(s.server_id, s.standby, s.ready) for s in states] == [("ns/s1", True, False), ("ns/s2", True, True)]


def test_promotion_patch_moves_the_pod_out_of_the_standby_replicaset():
    ms = parse(sample_body())
    import datetime as dt

    patch = promotion_patch(owner_reference(ms), dt.datetime(2026, 1, 2, tzinfo=dt.UTC))["metadata"]
    assert patch["labels"] == {"kubetier.io/role": "serving", "kubetier.io/pool": "promoted"}
    assert [o["kind"] for o in patch["ownerReferences"]] == ["ModelService"]
    assert patch["ownerReferences"][0]["controller"] is True  # no ReplicaSet adopts it
    assert patch["annotations"][ASLEEP_ANNOTATION] is None  # merge patch: removed


class Recorder:
    def __init__(self) -> None:
        self.patches: list[tuple[str, str, dict[str, Any]]] = []

    async def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((kind, name, body))
        return {}


@contextlib.asynccontextmanager
async def engine(**config: Any):
    sim = EngineSimulator(load_profile("llama-3.1-8b-h100"), SimConfig(**config))
    server = await sim.serve("127.0.0.1", 0)
    try:
        yield sim, f"127.0.0.1:{port_of(server)}"
    finally:
        server.close()
        await sim.stop()


async def test_sleep_then_promote_against_the_engine_simulator():
    ms = parse(sample_body())
    spec = ms.spec.model_copy(update={"engine": ms.spec.engine.model_copy(update={"kind": "simulator"})})
    api = Recorder()
    async with (
        httpx.AsyncClient(timeout=5) as client,
        engine(model_name="m", model_load_seconds=1.0, enable_sleep_mode=True, wake_seconds=0.4) as (sim, ep),
    ):
        standby = pod("s1", "standby", pool="standby", annotations={"kubetier.io/local-endpoint": ep})
        assert await sleep_standbys(api, [standby], spec, client) == []  # still loading: left alone
        await asyncio.sleep(1.1)
        assert await sleep_standbys(api, [standby], spec, client) == ["ns/s1"]
        assert sim.sleeping
        assert api.patches[-1][2] == {"metadata": {"annotations": {ASLEEP_ANNOTATION: "level1"}}}
        result = await promote(api, standby, spec, owner_reference(ms), client)
        assert result.ok and not sim.sleeping
        assert 0.35 <= result.wake_s <= result.total_s < 3.0, result
    assert api.patches[-1][2]["metadata"]["labels"]["kubetier.io/role"] == "serving"


async def test_follower_acts_on_a_router_holding_a_request_at_zero():
    cfg = {"models": [{"name": "m", "profile": "llama-3.1-8b-h100", "tiers": [{"name": "t", "ttftMs": 1000, "tpotMs": 100}], "servers": []}]}  # fmt: skip
    router = Router(parse_config(cfg))
    front = await start_server(router.handle, "127.0.0.1", 0)
    status_url = f"http://127.0.0.1:{port_of(front)}/kubetier/status"
    seen: list[set[str]] = []

    async def on_demand(models: set[str]) -> None:
        seen.append(models)

    follower = DemandFollower(lambda: [status_url], on_demand, poll_s=5)
    task = asyncio.ensure_future(follower.run())
    try:
        await asyncio.sleep(0.3)  # first poll: nothing held
        assert seen == []
        router.demand.held("m", "t")
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen == [{"m"}]  # at once, not after the 5 s poll
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        front.close()
    assert demand_url("http://r:8080/kubetier/status") == "http://r:8080/kubetier/demand"
    assert held_models({"version": 3, "held": {"m": {"t": 1}, "n": {}}}) == {"m"}
