"""Real processes on loopback: engine simulators and the router, started as subprocesses."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from kubetier.localdev.processes import free_loopback_port, kubetier_command, start_process, stop_process, wait_http_ok
from kubetier.policy.latency import load_profile

# Process start/stop, free ports and readiness: the one helper (kubetier.localdev.processes).
free_port = free_loopback_port
wait_http = wait_http_ok


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> subprocess.Popen:
        p = start_process(kubetier_command(*args), subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def engine(self, port: int, model: str, profile: str, *extra: str) -> subprocess.Popen:
        p = self.start(
            "engine-sim", "--port", str(port), "--model", model, "--profile", profile, "--log-level", "WARNING", *extra
        )
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            stop_process(p, timeout=5)


@pytest.fixture
def procs() -> Iterator[Procs]:
    ps = Procs()
    try:
        yield ps
    finally:
        ps.stop_all()


@pytest.fixture
def small_profile(tmp_path: Path) -> str:
    """The shipped H100 profile with 4 sequences per server, so a bin saturates fast."""
    d = load_profile("llama-3.1-8b-h100").to_dict()
    d["name"] = "h100-4seq"
    d["maxNumSeqs"] = 4
    path = tmp_path / "h100-4seq.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


def write_config(tmp_path: Path, cfg: dict) -> str:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


os.environ.setdefault("PYTHONUNBUFFERED", "1")


def wait_servers_ready(base: str, timeout: float = 20.0) -> None:
    """Until the router's first health checks have seen every configured server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            models = httpx.get(base + "/kubetier/status", timeout=2).json()["models"]
            if all(s["ready"] for m in models.values() for s in m["servers"]):
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base}: servers not all ready")


async def stream_once(client: httpx.AsyncClient, base: str, tokens: int) -> int:
    """Stream one completion of ``tokens`` tokens through the router; returns the token chunks seen."""
    body = {"model": "m", "prompt": list(range(1000, 1064)), "max_tokens": tokens, "stream": True}
    n = 0
    async with client.stream("POST", f"{base}/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith('data: {"id"') and '"choices":[{' in line:
                n += 1
    return n
