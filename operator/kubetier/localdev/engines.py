"""Run a loopback engine-simulator process for every Running kubetier pod.

On a KWOK cluster the operator's pods reach Running without any container, so nothing
answers at their (fake) IPs. For local development and e2e tests, `LocalEngines` watches
the pods labelled ``app.kubernetes.io/managed-by=kubetier``, starts one process per
Running pod on a free 127.0.0.1 port, and annotates the pod with
``kubetier.io/local-endpoint: 127.0.0.1:<port>`` once the port accepts connections. When
the pod stops running or disappears, its process is stopped. Used as a context manager
it always stops every process it started.

The decisions (which pods need a process, which processes must stop, what arguments a
pod's engine gets) are pure functions; the class only does the I/O.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubetier.api.labels import LOCAL_ENDPOINT_ANNOTATION as LOCAL_ENDPOINT_ANNOTATION
from kubetier.api.labels import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from kubetier.localdev.processes import accepts_connections, free_loopback_port, start_process, stop_process

MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
DEFAULT_PROFILE = "llama-3.1-8b-h100"  # same default as kubetier.policy.latency
DEFAULT_MODEL = "local-model"
# A pod whose engine process keeps exiting is not restarted forever.
MAX_RESTARTS = 3

log = logging.getLogger("kubetier.localdev")


@dataclass(frozen=True)
class EngineArgs:
    """What one pod's local engine is started with."""

    profile: str = DEFAULT_PROFILE
    model: str = DEFAULT_MODEL
    model_load_seconds: float | None = None
    # a standby pod's engine runs with sleep mode (operator: autoscale_standby.py)
    enable_sleep_mode: bool = False
    wake_seconds: float | None = None


CommandFactory = Callable[[EngineArgs, int], list[str]]


# --------------------------------------------------------------------------- pure decisions


def pod_uid(pod: dict) -> str:
    return pod["metadata"]["uid"]


def pod_ref(pod: dict) -> str:
    return f"{pod['metadata'].get('namespace', '')}/{pod['metadata']['name']}"


def wants_engine(pod: dict) -> bool:
    """A pod needs a local engine while it is Running and not being deleted."""
    return pod.get("status", {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")


def plan(pods: Iterable[dict], running: Iterable[str], gave_up: Iterable[str] = ()) -> tuple[list[dict], list[str]]:
    """(pods to start an engine for, pod uids whose engine must stop).

    `running` are the uids that have a process now; `gave_up` are uids whose process
    failed too often and must not be started again.
    """
    running = set(running)
    skip = set(gave_up)
    wanted = {pod_uid(p): p for p in pods if wants_engine(p)}
    start = [p for uid, p in wanted.items() if uid not in running and uid not in skip]
    stop = sorted(uid for uid in running if uid not in wanted)
    return start, stop


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def engine_args_from_pod(
    pod: dict, default_profile: str = DEFAULT_PROFILE, default_model: str = DEFAULT_MODEL
) -> EngineArgs:
    """The engine arguments the operator gave the pod's first container, if any.

    The operator runs the engine simulator in the pod with the same flags as
    `kubetier engine-sim`; a vLLM pod carries `--model` too. Missing flags fall back to
    the defaults, so any managed pod gets a working local engine.
    """
    containers = pod.get("spec", {}).get("containers") or [{}]
    argv = [str(a) for a in (containers[0].get("command") or []) + (containers[0].get("args") or [])]
    load = _flag_value(argv, "--model-load-seconds")
    return EngineArgs(
        profile=_flag_value(argv, "--profile") or default_profile,
        # vLLM pods name the model clients use with --served-model-name (their --model is
        # the weights' source); the simulator has only --model.
        model=_flag_value(argv, "--served-model-name") or _flag_value(argv, "--model") or default_model,
        model_load_seconds=float(load) if load is not None else None,
        enable_sleep_mode="--enable-sleep-mode" in argv,
        wake_seconds=float(wake) if (wake := _flag_value(argv, "--wake-seconds")) is not None else None,
    )


def configmap_mount_for(pod: dict, path: str) -> tuple[str, str] | None:
    """(ConfigMap name, key) when ``path`` lies in a ConfigMap volume of the pod's first
    container, else None. The operator points the simulator at a profile mounted from the
    routing ConfigMap; a loopback process has no such mount."""
    spec = pod.get("spec", {})
    volumes = {v.get("name"): v.get("configMap") for v in spec.get("volumes") or [] if v.get("configMap")}
    containers = spec.get("containers") or [{}]
    for mount in containers[0].get("volumeMounts") or []:
        cm = volumes.get(mount.get("name"))
        root = str(mount.get("mountPath", "")).rstrip("/")
        if cm and root and path.startswith(root + "/"):
            rel = path[len(root) + 1 :]
            key = next((item["key"] for item in cm.get("items") or [] if item.get("path") == rel), rel)
            return cm["name"], key
    return None


def engine_sim_command(time_scale: float = 1.0, python: str = sys.executable) -> CommandFactory:
    """The command line of `kubetier engine-sim` for one pod (flags from docs/contracts.md)."""

    def build(args: EngineArgs, port: int) -> list[str]:
        cmd = [
            python,
            "-m",
            "kubetier.cli",
            "engine-sim",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--profile",
            args.profile,
            "--model",
            args.model,
            "--time-scale",
            str(time_scale),
        ]
        if args.model_load_seconds is not None:
            cmd += ["--model-load-seconds", str(args.model_load_seconds)]
        if args.enable_sleep_mode:
            cmd.append("--enable-sleep-mode")
        if args.wake_seconds is not None:
            cmd += ["--wake-seconds", str(args.wake_seconds)]
        return cmd

    return build


# --------------------------------------------------------------------------- I/O


@dataclass
class _Engine:
    uid: str
    namespace: str
    name: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    annotated: threading.Event = field(default_factory=threading.Event)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalEngines:
    """Keep one loopback engine process per Running kubetier pod.

    ``api_client`` is a ``kubernetes.client.ApiClient`` with permission to list, watch
    and patch pods. ``command`` builds the process command line from a pod's
    `EngineArgs` and the chosen port (default: `kubetier engine-sim`). ``namespace``
    limits the watch to one namespace (default: all).
    """

    def __init__(
        self,
        api_client: Any,
        *,
        namespace: str | None = None,
        command: CommandFactory | None = None,
        label_selector: str = MANAGED_SELECTOR,
        ready_timeout_s: float = 60.0,
        log_dir: str | os.PathLike | None = None,
        default_profile: str = DEFAULT_PROFILE,
        default_model: str = DEFAULT_MODEL,
        watch_timeout_s: int = 2,
    ) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._namespace = namespace
        self._command = command or engine_sim_command()
        self._selector = label_selector
        self._ready_timeout_s = ready_timeout_s
        self._own_log_dir = log_dir is None
        self._log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="kubetier-engines-"))
        self._defaults = (default_profile, default_model)
        self._watch_timeout_s = max(1, int(watch_timeout_s))
        self._engines: dict[str, _Engine] = {}
        self._failures: dict[str, int] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    # -- lifecycle

    def __enter__(self) -> LocalEngines:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kubetier-local-engines", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop watching and stop every process this helper started."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._watch_timeout_s + 10)
            self._thread = None
        with self._lock:
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            self._stop_engine(engine, remove_annotation=True)
        if self._own_log_dir:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    # -- queries

    def endpoints(self) -> dict[str, str]:
        """``namespace/pod`` -> ``127.0.0.1:<port>`` for every engine that is serving and annotated."""
        with self._lock:
            return {f"{e.namespace}/{e.name}": e.endpoint for e in self._engines.values() if e.annotated.is_set()}

    def processes(self) -> dict[str, int]:
        """``namespace/pod`` -> pid of every engine process currently running."""
        with self._lock:
            return {f"{e.namespace}/{e.name}": e.proc.pid for e in self._engines.values()}

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout_s: float = 60.0) -> dict[str, str]:
        """Wait until ``predicate(endpoints())`` holds; raise TimeoutError naming what is there."""
        deadline = time.monotonic() + timeout_s
        while True:
            eps = self.endpoints()
            if predicate(eps):
                return eps
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"local engines did not reach the expected state in {timeout_s:.0f}s: "
                    f"endpoints={eps} errors={self.errors[-5:]}"
                )
            time.sleep(0.1)

    # -- the loop

    def _list(self) -> tuple[list[dict], str]:
        kwargs: dict[str, Any] = {"label_selector": self._selector, "_preload_content": False}
        if self._namespace:
            resp = self._core.list_namespaced_pod(self._namespace, **kwargs)
        else:
            resp = self._core.list_pod_for_all_namespaces(**kwargs)
        body = json.loads(resp.data)  # type: ignore[attr-defined]  # _preload_content=False: a raw HTTP response
        return body.get("items", []), body["metadata"].get("resourceVersion", "")

    def sync_once(self) -> str:
        """List pods, start and stop processes as `plan` says; returns the list's resourceVersion."""
        pods, rv = self._list()
        self._reap_exited()
        with self._lock:
            gave_up = [uid for uid, n in self._failures.items() if n > MAX_RESTARTS]
            to_start, to_stop = plan(pods, self._engines, gave_up)
            stopping = [self._engines.pop(uid) for uid in to_stop]
        for engine in stopping:
            # the pod is gone or no longer Running: its annotation goes with it
            self._stop_engine(engine, remove_annotation=False)
        for pod in to_start:
            self._start_engine(pod)
        return rv

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        while not self._stop.is_set():
            try:
                rv = self.sync_once()
                # Any pod event wakes us for a full re-sync; with few pods that is cheap
                # and leaves nothing to get out of step.
                w = watch.Watch()
                kwargs = {
                    "label_selector": self._selector,
                    "resource_version": rv,
                    "timeout_seconds": self._watch_timeout_s,
                    "_request_timeout": self._watch_timeout_s + 5,
                }
                fn = self._core.list_namespaced_pod if self._namespace else self._core.list_pod_for_all_namespaces
                args = (self._namespace,) if self._namespace else ()
                for _event in w.stream(fn, *args, **kwargs):
                    w.stop()
                    break
            except ApiException as exc:
                if exc.status != 410:  # 410: resourceVersion too old, just re-list
                    self._record(f"pod watch failed: {exc.status} {exc.reason}")
                    self._stop.wait(1.0)
            except Exception as exc:  # keep the helper alive through API hiccups
                self._record(f"local engines loop: {exc!r}")
                self._stop.wait(1.0)

    def _record(self, msg: str) -> None:
        log.warning("%s", msg)
        self.errors.append(msg)

    # -- processes

    def _start_engine(self, pod: dict) -> None:
        meta = pod["metadata"]
        args = engine_args_from_pod(pod, *self._defaults)
        mounted = configmap_mount_for(pod, args.profile)
        if mounted is not None:
            args = replace(args, profile=str(self._materialise(meta["namespace"], *mounted)))
        port = free_loopback_port()
        cmd = self._command(args, port)
        log_path = self._log_dir / f"{meta['namespace']}_{meta['name']}.log"
        proc = start_process(cmd, log_path)
        engine = _Engine(
            uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], port=port, proc=proc, log_path=log_path
        )
        with self._lock:
            self._engines[engine.uid] = engine
        log.info("started engine for %s on %s (pid %d)", pod_ref(pod), engine.endpoint, proc.pid)
        threading.Thread(target=self._annotate_when_serving, args=(engine,), daemon=True).start()

    def _materialise(self, namespace: str, configmap: str, key: str) -> Path:
        """Write a ConfigMap key to a local file: what kubelet's volume mount would show
        the engine inside the pod."""
        cm = self._core.read_namespaced_config_map(configmap, namespace)
        data = (cm.data or {}).get(key)
        if data is None:
            raise FileNotFoundError(f"ConfigMap {namespace}/{configmap} has no key {key!r}")
        path = self._log_dir / f"{namespace}_{configmap}_{key}"
        path.write_text(data)
        return path

    def _annotate_when_serving(self, engine: _Engine) -> None:
        deadline = time.monotonic() + self._ready_timeout_s
        while not self._stop.is_set() and engine.proc.poll() is None:
            if accepts_connections(engine.port):
                try:
                    self._set_annotation(engine, engine.endpoint)
                    engine.annotated.set()
                except Exception as exc:
                    self._record(f"annotating {engine.namespace}/{engine.name} failed: {exc!r}")
                return
            if time.monotonic() > deadline:
                self._record(
                    f"engine for {engine.namespace}/{engine.name} did not listen on {engine.endpoint} "
                    f"within {self._ready_timeout_s:.0f}s (log: {engine.log_path})"
                )
                return
            time.sleep(0.05)

    def _set_annotation(self, engine: _Engine, value: str | None) -> None:
        body = {"metadata": {"annotations": {LOCAL_ENDPOINT_ANNOTATION: value}}}
        self._core.patch_namespaced_pod(engine.name, engine.namespace, body)

    def _reap_exited(self) -> None:
        with self._lock:
            exited = [e for e in self._engines.values() if e.proc.poll() is not None]
            for engine in exited:
                del self._engines[engine.uid]
                self._failures[engine.uid] = self._failures.get(engine.uid, 0) + 1
        for engine in exited:
            tail = engine.log_path.read_text(errors="replace")[-500:] if engine.log_path.exists() else ""
            self._record(f"engine for {engine.namespace}/{engine.name} exited with {engine.proc.returncode}: {tail}")
            self._remove_annotation_quietly(engine)

    def _remove_annotation_quietly(self, engine: _Engine) -> None:
        try:
            self._set_annotation(engine, None)
        except Exception:  # the pod may be gone already; nothing to clean then
            pass

    def _stop_engine(self, engine: _Engine, remove_annotation: bool) -> None:
        stop_process(engine.proc, timeout=5)
        if remove_annotation and engine.annotated.is_set():
            self._remove_annotation_quietly(engine)
        log.info("stopped engine for %s/%s", engine.namespace, engine.name)
