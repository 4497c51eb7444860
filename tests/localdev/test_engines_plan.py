"""Pure decisions of kubetier.localdev: which pods get a local engine, with which flags."""

from __future__ import annotations

import sys

from kubetier.localdev import EngineArgs, engine_args_from_pod, engine_sim_command, plan
from kubetier.localdev.engines import DEFAULT_MODEL, DEFAULT_PROFILE, free_loopback_port


def pod(uid: str, phase: str = "Running", deleting: bool = False, args: list[str] | None = None) -> dict:
    meta = {"uid": uid, "name": f"pod-{uid}", "namespace": "ns"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-23T00:00:00Z"
    containers = [{"name": "engine", "args": args}] if args is not None else []
    return {"metadata": meta, "spec": {"containers": containers}, "status": {"phase": phase}}


def test_plan_starts_running_pods_without_a_process():
    start, stop = plan([pod("a"), pod("b"), pod("c", phase="Pending")], running={"b"})
    assert [p["metadata"]["uid"] for p in start] == ["a"]
    assert stop == []


def test_plan_stops_processes_of_gone_deleting_or_finished_pods():
    pods = [pod("a"), pod("b", deleting=True), pod("c", phase="Succeeded")]
    start, stop = plan(pods, running={"a", "b", "c", "gone"})
    assert start == []
    assert stop == ["b", "c", "gone"]


def test_plan_does_not_restart_a_pod_it_gave_up_on():
    start, _ = plan([pod("a"), pod("b")], running=set(), gave_up={"a"})
    assert [p["metadata"]["uid"] for p in start] == ["b"]


def test_engine_args_come_from_the_pods_engine_sim_flags():
    p = pod(
        "a",
        args=[
            "engine-sim",
            "--port",
            "8000",
            "--profile",
            "qwen-7b-a100",
            "--model=Qwen/Qwen2-7B",
            "--model-load-seconds",
            "2.5",
        ],
    )
    assert engine_args_from_pod(p) == EngineArgs(profile="qwen-7b-a100", model="Qwen/Qwen2-7B", model_load_seconds=2.5)


def test_engine_args_fall_back_to_defaults_for_pods_without_flags():
    assert engine_args_from_pod(pod("a")) == EngineArgs(DEFAULT_PROFILE, DEFAULT_MODEL, None)
    assert engine_args_from_pod(pod("a"), "p", "m") == EngineArgs("p", "m", None)


def test_engine_sim_command_uses_the_contract_flags_on_loopback():
    cmd = engine_sim_command(time_scale=0.1)(EngineArgs("prof", "mod", 3.0), 4321)
    assert cmd[:4] == [sys.executable, "-m", "kubetier.cli", "engine-sim"]
    flags = dict(zip(cmd[4::2], cmd[5::2]))
    assert flags == {
        "--host": "127.0.0.1",
        "--port": "4321",
        "--profile": "prof",
        "--model": "mod",
        "--time-scale": "0.1",
        "--model-load-seconds": "3.0",
    }


def test_free_loopback_port_is_bindable():
    import socket

    port = free_loopback_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        assert s.getsockname() == ("127.0.0.1", port)
