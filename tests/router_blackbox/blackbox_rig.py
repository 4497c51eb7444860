"""The black-box rig: engine simulators and the router as real processes on loopback,
driven only through their ports (the official ``openai`` client, httpx, raw sockets)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

KEY_ALL = "sk-blackbox-all-tiers"
KEY_SLOW = "sk-blackbox-slow-only"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not up")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@dataclass
class Rig:
    tmp: Path
    router_args: tuple[str, ...] = ()
    procs: list[subprocess.Popen] = field(default_factory=list)
    engine_ports: list[int] = field(default_factory=list)
    port: int = 0
    admin_port: int = 0
    router: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def _start(self, args: list[str], log: Path | None = None) -> subprocess.Popen:
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the process owns it
        p = subprocess.Popen(
            [sys.executable, "-m", "kubetier.cli", *args], stdout=out, stderr=out, start_new_session=True
        )
        self.procs.append(p)
        return p

    def start(self, engines: int = 2) -> Rig:
        for _ in range(engines):
            port = free_port()
            self.engine_ports.append(port)
            self._start(["engine-sim", "--port", str(port), "--model", "m", "--log-level", "WARNING"])
        tiers = [
            {"name": "fast", "ttftMs": 2000, "tpotMs": 50, "priority": 10},
            {"name": "slow", "ttftMs": 5000, "tpotMs": 200, "priority": 1},
        ]
        cfg = {
            "models": [
                {
                    "name": "m",
                    "profile": "llama-3.1-8b-h100",
                    "tiers": tiers,
                    "servers": [{"url": f"http://127.0.0.1:{p}", "tier": "fast"} for p in self.engine_ports],
                },
                {  # an outage: its only server never answers
                    "name": "down",
                    "profile": "llama-3.1-8b-h100",
                    "tiers": [{"name": "r", "ttftMs": 300, "tpotMs": 100}],
                    "servers": [{"url": f"http://127.0.0.1:{free_port()}", "tier": "r"}],
                },
            ],
            "apiKeys": [{"key": KEY_ALL, "tiers": ["fast", "slow", "r"]}, {"key": KEY_SLOW, "tiers": ["slow"]}],
        }
        path = self.tmp / "router.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.port, self.admin_port = free_port(), free_port()
        self.log_path = self.tmp / "router.log"
        self.router = self._start(
            [
                "router",
                "--port",
                str(self.port),
                "--admin-port",
                str(self.admin_port),
                "--config",
                str(path),
                "--scrape-interval",
                "0.2",
                *self.router_args,
            ],
            self.log_path,
        )
        for p in self.engine_ports:
            wait_http(f"http://127.0.0.1:{p}/health")
        wait_http(self.base + "/health")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = httpx.get(self.admin + "/kubetier/status", timeout=2).json()
            if all(s["ready"] for s in st["models"]["m"]["servers"]):
                break
            time.sleep(0.1)
        return self

    def engine_running(self) -> float:
        """Requests the engines are working on, from their own metrics."""
        total = 0.0
        for p in self.engine_ports:
            for line in httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=2).text.splitlines():
                if line.startswith("vllm:num_requests_running"):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def log_lines(self) -> list[dict]:
        out = []
        for line in (self.log_path.read_text(errors="replace") if self.log_path else "").splitlines():
            i = line.find("{")
            if "kubetier.router.access" in line and i >= 0:
                try:
                    out.append(json.loads(line[i:]))
                except ValueError:
                    pass
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, read_all: bool = True) -> bytes:
    """Send bytes on a fresh connection; what comes back until close (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        chunks = []
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
                if not read_all:
                    break
        except OSError:
            pass
    return b"".join(chunks)


def post_raw(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    h = {"host": "x", "content-type": "application/json", "content-length": str(len(body))}
    h.update(headers or {})
    return (
        f"POST {path} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in h.items()).encode() + b"\r\n" + body
    )


def status_of(response: bytes) -> int:
    line = response.split(b"\r\n", 1)[0]
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


os.environ.setdefault("PYTHONUNBUFFERED", "1")
