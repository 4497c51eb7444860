"""The agent against real engine simulators on loopback (simulated backend) and an in-memory Node API."""

from __future__ import annotations

import asyncio
import json

import pytest

from kubetier.agent.backend import BackendError
from kubetier.agent.loop import Agent, AgentConfig
from kubetier.agent.main import build_parser, main
from kubetier.agent.simulated import SimulatedBackend, parse_power_metrics
from kubetier.api.node_power import POWER_CAP_ANNOTATION, POWER_REPORT_ANNOTATION, NodePowerReport


class MemoryNodes:
    """Nodes as the apiserver would hold them; merge-patches of annotations only."""

    def __init__(self, *names: str) -> None:
        self.nodes = {n: {"metadata": {"name": n, "annotations": {}}} for n in names}

    async def get(self, kind, namespace, name):
        assert kind == "Node" and namespace is None
        return json.loads(json.dumps(self.nodes.get(name))) if name in self.nodes else None

    async def patch(self, kind, namespace, name, patch):
        ann = self.nodes[name]["metadata"]["annotations"]
        for k, v in patch["metadata"]["annotations"].items():
            if v is None:
                ann.pop(k, None)
            else:
                ann[k] = v
        return self.nodes[name]

    def report(self, name: str) -> NodePowerReport:
        return NodePowerReport.model_validate_json(self.nodes[name]["metadata"]["annotations"][POWER_REPORT_ANNOTATION])


def test_parse_power_metrics_ignores_other_series():
    text = (
        "# HELP kubetier_engine_power_watts x\n"
        'kubetier_engine_power_watts{model_name="m"} 303.2\n'
        'kubetier_engine_power_cap_watts{model_name="m"} 0\n'
        'kubetier_engine_kv_tokens{model_name="m"} 5\n'
        'kubetier_engine_max_power_watts{model_name="m"} 700\n'
    )
    assert parse_power_metrics(text) == {
        "kubetier_engine_power_watts": 303.2,
        "kubetier_engine_power_cap_watts": 0.0,
        "kubetier_engine_max_power_watts": 700.0,
    }


async def test_agent_applies_the_requested_cap_and_reports_it(engine_url):
    sims = [await engine_url(time_scale=10) for _ in range(2)]
    backend = SimulatedBackend([u for _, u in sims])
    nodes = MemoryNodes("gpu-a")
    agent = Agent(backend, nodes, AgentConfig(node="gpu-a", report_interval_s=0.1, sample_interval_s=0.05))
    try:
        r = await agent.report_once()
        assert nodes.report("gpu-a") == r
        assert r.backend == "simulated" and len(r.gpus) == 2
        assert r.watts == pytest.approx(160.0)  # two idle engines at 80 W
        assert not r.capped and r.requested_cap_watts is None

        nodes.nodes["gpu-a"]["metadata"]["annotations"][POWER_CAP_ANNOTATION] = "420"
        r = await agent.report_once()
        assert [s.engine.power_cap_watts for s, _ in sims] == [420.0, 420.0]
        assert r.requested_cap_watts == 420.0 and r.actuation_ms is not None
        await agent.sample()
        assert [g.cap_watts for g in agent.build_report().gpus] == [420.0, 420.0]

        nodes.nodes["gpu-a"]["metadata"]["annotations"][POWER_CAP_ANNOTATION] = ""
        await agent.report_once()
        assert [s.engine.power_cap_watts for s, _ in sims] == [None, None]
    finally:
        await asyncio.to_thread(backend.close)


async def test_bad_cap_annotation_is_reported_not_applied(engine_url):
    sim, url = await engine_url(time_scale=10)
    backend = SimulatedBackend([url])
    nodes = MemoryNodes("gpu-a")
    nodes.nodes["gpu-a"]["metadata"]["annotations"][POWER_CAP_ANNOTATION] = "lots"
    agent = Agent(backend, nodes, AgentConfig(node="gpu-a"))
    try:
        r = await agent.report_once()
        assert "not a number of watts" in r.error
        assert sim.engine.power_cap_watts is None
    finally:
        await asyncio.to_thread(backend.close)


async def test_unreachable_engine_is_a_backend_error():
    backend = SimulatedBackend(["http://127.0.0.1:9"], timeout_s=0.5)
    try:
        with pytest.raises(BackendError, match="cannot read /metrics"):
            await asyncio.to_thread(backend.read)
    finally:
        backend.close()


async def test_run_loop_reports_at_its_cadence_and_stops(engine_url):
    _, url = await engine_url(time_scale=10)
    backend = SimulatedBackend([url])
    nodes = MemoryNodes("gpu-a")
    agent = Agent(backend, nodes, AgentConfig(node="gpu-a", report_interval_s=0.2, sample_interval_s=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(task, 2)
    await asyncio.to_thread(backend.close)
    assert 3 <= agent.reports <= 7
    assert nodes.report("gpu-a").gpus[0].max_watts == 700.0


async def test_cli_once_prints_a_report(engine_url, capsys):
    _, url = await engine_url(time_scale=10)
    rc = await asyncio.to_thread(main, ["--node", "n1", "--backend", "simulated", "--engine", url, "--once"])
    assert rc == 0
    report = NodePowerReport.model_validate_json(capsys.readouterr().out.strip())
    assert report.node == "n1" and report.gpus[0].watts == 80.0


def test_cli_refuses_missing_node_and_misplaced_engine(capsys, monkeypatch):
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert main(["--backend", "simulated", "--engine", "http://127.0.0.1:1", "--once"]) == 2
    assert "--node" in capsys.readouterr().err
    assert main(["--node", "n", "--backend", "nvml", "--engine", "http://x"]) == 2
    assert "--engine applies to --backend simulated only" in capsys.readouterr().err
    assert "kubetier.io/power-report" in build_parser().format_help()


async def test_dry_run_reports_the_request_but_never_caps(engine_url):
    sim, url = await engine_url(time_scale=10)
    backend = SimulatedBackend([url])
    nodes = MemoryNodes("gpu-a")
    nodes.nodes["gpu-a"]["metadata"]["annotations"][POWER_CAP_ANNOTATION] = "420"
    agent = Agent(backend, nodes, AgentConfig(node="gpu-a"), apply_caps=False)
    try:
        r = await agent.report_once()
        assert r.requested_cap_watts == 420.0 and not r.capped
        assert sim.engine.power_cap_watts is None
    finally:
        await asyncio.to_thread(backend.close)


class WatchedNodes(MemoryNodes):
    """MemoryNodes with a watch: every annotation change is an event (like the apiserver's)."""

    def __init__(self, *names: str) -> None:
        super().__init__(*names)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.selectors: list[str | None] = []

    def set_cap(self, name: str, value: str) -> None:
        self.nodes[name]["metadata"]["annotations"][POWER_CAP_ANNOTATION] = value
        self.queue.put_nowait(json.loads(json.dumps(self.nodes[name])))

    async def watch(
        self, kind, namespace=None, label_selector=None, resource_version="", timeout_s=300, field_selector=None
    ):
        self.selectors.append(field_selector)
        while True:
            obj = await self.queue.get()
            yield type("Ev", (), {"type": "MODIFIED", "object": obj})()


async def test_watch_applies_a_new_cap_without_waiting_for_the_next_report(engine_url):
    sim, url = await engine_url(time_scale=10)
    backend = SimulatedBackend([url])
    nodes = WatchedNodes("gpu-a")
    # Reports every 30 s: only the watch can apply the cap within the test's 2 s.
    agent = Agent(backend, nodes, AgentConfig(node="gpu-a", report_interval_s=30, sample_interval_s=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.sleep(0.3)
        nodes.set_cap("gpu-a", "350")
        for _ in range(40):
            if sim.engine.power_cap_watts == 350.0:
                break
            await asyncio.sleep(0.05)
        assert sim.engine.power_cap_watts == 350.0
        assert nodes.selectors == ["metadata.name=gpu-a"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await asyncio.to_thread(backend.close)


async def test_agent_relays_a_preemption_notice_beside_its_power_loop(engine_url):
    from test_preemption_metadata import MetadataMock

    from kubetier.agent.main import run_agent
    from kubetier.policy.spot import DEADLINE_ANNOTATION, SOURCE_ANNOTATION

    _, url = await engine_url(time_scale=10)
    meta = MetadataMock()
    backend = SimulatedBackend([url])
    nodes = MemoryNodes("gpu-a")
    agent = Agent(backend, nodes, AgentConfig(node="gpu-a", report_interval_s=0.2, sample_interval_s=0.05))
    args = build_parser().parse_args(
        ["--node", "gpu-a", "--preemption", "gcp", "--metadata-url", meta.url, "--preemption-interval", "0.05"]
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(agent, nodes, args, stop))
    try:
        await asyncio.sleep(0.4)
        assert DEADLINE_ANNOTATION not in nodes.nodes["gpu-a"]["metadata"]["annotations"]
        meta.notice = True
        for _ in range(40):
            if DEADLINE_ANNOTATION in nodes.nodes["gpu-a"]["metadata"]["annotations"]:
                break
            await asyncio.sleep(0.05)
        ann = nodes.nodes["gpu-a"]["metadata"]["annotations"]
        assert ann[SOURCE_ANNOTATION] == "gcp"
        assert POWER_REPORT_ANNOTATION in ann  # the power loop kept reporting
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await asyncio.to_thread(backend.close)
        meta.close()
