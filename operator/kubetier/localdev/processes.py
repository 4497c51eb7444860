"""Local processes on loopback: free ports, starting `kubetier` subcommands, waiting for
them to answer, stopping them. The one copy used by the demo, the local engines, the
chart's local runner and the test suites (development only: the operator and router
never import it, see the import contracts in pyproject.toml).

Standard library only, so it works before anything else is imported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def accepts_connections(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def kubetier_command(*args: str) -> list[str]:
    """``kubetier <args>`` run with this interpreter (no dependence on PATH)."""
    return [sys.executable, "-m", "kubetier.cli", *args]


def start_process(
    argv: Sequence[str],
    log: Path | IO[Any] | int | None = None,
    *,
    env: Mapping[str, str] | None = None,
    unset: Sequence[str] = (),
    **popen: Any,
) -> subprocess.Popen:
    """Start ``argv`` in its own session (so :func:`stop_process` stops its children too),
    stdin closed, stdout and stderr into ``log`` (a path is opened for appending; None
    inherits; other Popen options override these). The child's environment is this
    process's plus ``env``, less ``unset``."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for name in unset:
        full_env.pop(name, None)
    out: IO[Any] | int | None
    if isinstance(log, Path):
        out = open(log, "ab")  # noqa: SIM115 - the child holds it; closed in this process below
    else:
        out = log
    options: dict[str, Any] = {
        "stdout": out,
        "stderr": subprocess.STDOUT if out is not None else None,
        "stdin": subprocess.DEVNULL,
        "env": full_env,
        "start_new_session": True,
    }
    options.update(popen)  # e.g. stderr=subprocess.PIPE to read it apart
    try:
        return subprocess.Popen(list(argv), **options)
    finally:
        if isinstance(log, Path) and out is not None and not isinstance(out, int):
            out.close()


@contextlib.contextmanager
def started_process(
    argv: Sequence[str],
    log: Path | IO[Any] | int | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stop_timeout: float = 15.0,
) -> Iterator[subprocess.Popen]:
    """:func:`start_process` for a ``with`` block: the process (and its children) is
    stopped with :func:`stop_process` when the block ends, also when it fails."""
    proc = start_process(argv, log, env=env)
    try:
        yield proc
    finally:
        stop_process(proc, timeout=stop_timeout)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        if os.getpgid(proc.pid) == proc.pid:  # a session/group leader: its children go too
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> int | None:
    """SIGTERM (to the process group when the process leads one), then SIGKILL after
    ``timeout`` seconds. Returns the exit code. A process already gone is fine."""
    if proc.poll() is None:
        _signal(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


def kill_process(proc: subprocess.Popen) -> None:
    """SIGKILL at once, no graceful shutdown (as a crash or an OOM kill would be)."""
    if proc.poll() is None:
        _signal(proc, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_http_ok(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Until GET ``url`` answers 200. Fails early, saying so, when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except urllib.error.HTTPError as exc:
            last = exc.code
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:g}s (last: {last})")
