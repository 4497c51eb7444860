"""``kubetier demo``: the whole system on a real local cluster, end to end.

What it does, each step printed with its duration:

1. installs the CRDs (generated from the models) with the real kubectl;
2. runs ``kubetier operator`` under its own ServiceAccount and least-privilege RBAC;
3. applies a three-tier ``ModelService`` (engine: the simulator) and API-key Secrets,
   and waits for the operator to report it ``Ready`` with pods on the fake GPU nodes;
4. starts one engine-simulator process on loopback per Running pod (KWOK pods run no
   containers) and ``kubetier router`` with cluster discovery;
5. tries a tier escalation (must be refused), then sends open-loop streaming traffic
   through the router in two phases: a steady tier mix, and a burst of long-prompt
   batch work that outgrows the batch tier's server and spills onto tighter tiers;
6. prints per-tier TTFT/TPOT and SLO attainment as a client saw them, with the
   router's spill and rejection counts;
7. in a third phase, a spot node serving the service gets a preemption notice (the taint
   Karpenter sets) mid-traffic: the operator drains and replaces its pods at once, the
   router moves the streams still running on it to other servers at token level, the
   node then goes; the demo reports requests in flight, migrated and failed (zero), the
   replacement's capacity type and the time from notice to drained;
8. applies a one-tier ModelService with ``replicas.min: 0``, shows it Ready at zero
   replicas, and times its first streamed request through the router: the router holds
   it while the operator's autoscaler scales the tier from zero; then cleans up.

``make demo`` brings the local cluster up first and down afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kubetier.api.labels import (
    CAPACITY_SPOT,
    CAPACITY_TYPE_LABEL,
    KARPENTER_DISRUPTED_TAINT,
    ROLE_LABEL,
    ROLE_SERVING,
    SERVICE_LABEL,
)
from kubetier.api.modelservice import API_VERSION
from kubetier.localdev.access import Kubectl, find_kubectl, service_account_objects, token_kubeconfig
from kubetier.localdev.fake_nodes import recreatable_node
from kubetier.localdev.processes import free_loopback_port, start_process, stop_process
from kubetier.stats import percentile

MODEL = "llama-3.1-8b"
SERVICE = "llama-demo"
OPERATOR_SA = "kubetier-operator"
TEAM_KEY = "sk-demo-team-a"  # may use every tier
BATCH_KEY = "sk-demo-batch"  # may use only the batch tier

# (tier, ttftMs, tpotMs, priority)
TIERS = [("interactive", 500, 40, 100), ("standard", 1500, 80, 50), ("batch", 8000, 200, 10)]


@dataclass(frozen=True)
class Stream:
    """One class of traffic in a phase: a tier, its share and its request shape."""

    tier: str
    share: float
    max_tokens: int
    prompt_tokens: int | None = None  # the simulator's length hint: long prompts without long bodies


@dataclass(frozen=True)
class Phase:
    name: str
    rate: float
    streams: tuple[Stream, ...]


def phases(rate: float) -> list[Phase]:
    """A steady mix, then a burst of long-prompt batch work that outgrows the batch
    tier's server: it must spill onto the tighter tiers' servers (never the reverse)
    while the interactive tier keeps its SLO."""
    return [
        Phase(
            "steady mix", rate, (Stream("interactive", 0.3, 64), Stream("standard", 0.4, 96), Stream("batch", 0.3, 128))
        ),
        Phase(
            "batch burst (8k-token prompts)",
            rate * 2,
            (Stream("interactive", 0.3, 64), Stream("batch", 0.7, 128, prompt_tokens=8000)),
        ),
    ]


def demo_objects(namespace: str) -> list[dict]:
    """The API-key Secrets and the three-tier ModelService the demo applies."""
    secrets = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {"api-key": key},
        }
        for name, key in (("team-a-key", TEAM_KEY), ("batch-jobs-key", BATCH_KEY))
    ]
    tiers = []
    for name, ttft, tpot, priority in TIERS:
        tier = {
            "name": name,
            "ttftMs": ttft,
            "tpotMs": tpot,
            "priority": priority,
            "meanOutputTokens": 128,
            "replicas": {"min": 1, "max": 4},
        }
        tier["capacity"] = (
            {"spot": "never"} if name == "interactive" else {"spot": "preferred" if name == "batch" else "allowed"}
        )
        if name == "batch":
            tier["onLate"] = "queue"
        tiers.append(tier)
    ms = {
        "apiVersion": API_VERSION,
        "kind": "ModelService",
        "metadata": {"name": SERVICE, "namespace": namespace},
        "spec": {
            "model": {"name": MODEL, "source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "engine": {"kind": "simulator", "args": ["--model-load-seconds", "2"]},
            "resources": {"gpusPerReplica": 1, "cpu": "500m", "memory": "512Mi"},
            "latencyProfile": {"builtin": "llama-3.1-8b-h100"},
            "tiers": tiers,
            "access": [
                {"secretRef": {"name": "team-a-key"}, "tiers": [t[0] for t in TIERS]},
                {"secretRef": {"name": "batch-jobs-key"}, "tiers": ["batch"]},
            ],
        },
    }
    return [*secrets, ms]


# --------------------------------------------------------------------------- traffic


@dataclass
class TierStats:
    ttft_ms: int
    tpot_ms: int
    ttfts: list[float] = field(default_factory=list)
    tpots: list[float] = field(default_factory=list)
    met: int = 0
    sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    incomplete: int = 0  # streams that ended with fewer or more tokens than asked for

    def record_error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def one_request(client: httpx.AsyncClient, stream: Stream, stats: TierStats) -> None:
    body = {
        "model": MODEL,
        "prompt": "Explain SLO tiers to a platform engineer. " * 8,
        "max_tokens": stream.max_tokens,
        "stream": True,
    }
    if stream.prompt_tokens:
        body["prompt_tokens"] = stream.prompt_tokens
    headers = {"Authorization": f"Bearer {TEAM_KEY}", "X-Kubetier-Tier": stream.tier}
    stats.sent += 1
    start = time.monotonic()
    first: float | None = None
    last = start
    tokens = 0
    try:
        async with client.stream("POST", "/v1/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                stats.record_error(f"http {resp.status_code}")
                await resp.aread()
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if '"error"' in line:
                    stats.record_error("stream error event")
                    return
                now = time.monotonic()
                first = first or now
                last = now
                tokens += 1
    except httpx.HTTPError as exc:
        stats.record_error(type(exc).__name__)
        return
    if first is None:
        stats.record_error("no tokens")
        return
    if tokens != stream.max_tokens:  # a resumed stream must neither lose nor repeat a token
        stats.incomplete += 1
    ttft = (first - start) * 1000
    tpot = (last - first) * 1000 / max(1, tokens - 1)
    stats.ttfts.append(ttft)
    stats.tpots.append(tpot)
    if ttft <= stats.ttft_ms and tpot <= stats.tpot_ms:
        stats.met += 1


async def drive_traffic(base_url: str, phase: Phase, duration_s: float, seed: int) -> dict[str, TierStats]:
    """Open-loop Poisson arrivals at the phase's rate for ``duration_s``; every request
    is awaited to its end (nothing is abandoned when the clock runs out)."""
    rng = random.Random(seed)
    stats = {name: TierStats(ttft, tpot) for name, ttft, tpot, _ in TIERS}
    shares = [s.share for s in phase.streams]
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        tasks = []
        t_end = time.monotonic() + duration_s
        next_at = time.monotonic()
        while next_at < t_end:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            stream = rng.choices(phase.streams, weights=shares)[0]
            tasks.append(asyncio.ensure_future(one_request(client, stream, stats[stream.tier])))
            next_at += rng.expovariate(phase.rate)
        await asyncio.gather(*tasks)
    return stats


# Expected seconds from a new pod to a loaded engine (scale from zero): the router's hold
# bound is a tier's TTFT plus this; the operator's pre-warm lead.
EXPECTED_START_S = 30
NOTICE_WINDOW_S = 10
NOTICE_TAINT = {"key": KARPENTER_DISRUPTED_TAINT, "effect": "NoSchedule"}


@dataclass
class NoticeReport:
    node: str = ""
    pods: list[str] = field(default_factory=list)
    inflight_at_notice: int = 0
    drained_s: float | None = None  # notice -> no serving pod left on the node
    replacements: dict[str, str] = field(default_factory=dict)  # pod -> capacity type of its node
    error: str = ""


def preemption_notice(kubectl: Kubectl, ns: str, base_url: str, delay_s: float, report: NoticeReport) -> None:
    """After ``delay_s``: taint a spot node that serves this service (a preemption notice),
    wait for its pods to be replaced elsewhere, then delete the node (the instance is gone).
    Runs beside the traffic (a thread); the node is put back by the caller."""
    time.sleep(delay_s)
    try:
        nodes = {n["metadata"]["name"]: n for n in kubectl.json("get", "nodes")["items"]}
        pods = [p for p in kubectl.items("pods", ns, f"{SERVICE_LABEL}={SERVICE}") if p["spec"].get("nodeName")]
        spot = [
            p
            for p in pods
            if nodes[p["spec"]["nodeName"]]["metadata"].get("labels", {}).get(CAPACITY_TYPE_LABEL) == CAPACITY_SPOT
        ]
        if not spot:
            report.error = "no pod of the service runs on a spot node"
            return
        report.node = spot[0]["spec"]["nodeName"]
        report.pods = sorted(p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == report.node)
        report.inflight_at_notice = sum(
            t.get("inflight", 0) for t in router_tiers(base_url).values() if isinstance(t, dict)
        )
        taints = (nodes[report.node].get("spec") or {}).get("taints", []) + [NOTICE_TAINT]
        t0 = time.monotonic()
        kubectl("patch", "node", report.node, "--type=merge", "-p", json.dumps({"spec": {"taints": taints}}))

        def drained():
            now = kubectl.items("pods", ns, f"{SERVICE_LABEL}={SERVICE}")
            return None if any(p["spec"].get("nodeName") == report.node for p in now) else now

        wait_for(drained, f"pods on {report.node} drained", timeout=60, interval=0.2)
        report.drained_s = time.monotonic() - t0
        old = {p["metadata"]["name"] for p in pods}
        kubectl("delete", "node", report.node, "--wait=false")

        def replaced():
            now = kubectl.items("pods", ns, f"{SERVICE_LABEL}={SERVICE}")
            new = [p for p in now if p["metadata"]["name"] not in old and p["spec"].get("nodeName")]
            return now if len(new) >= len(report.pods) else None

        now = wait_for(replaced, "replacements scheduled", timeout=60, interval=0.2)
        for p in now:
            node = p["spec"].get("nodeName")
            if p["metadata"]["name"] not in old and node in nodes:
                report.replacements[p["metadata"]["name"]] = (
                    nodes[node]["metadata"].get("labels", {}).get(CAPACITY_TYPE_LABEL, "")
                )
    except Exception as exc:  # reported by the caller; the traffic phase goes on
        report.error = f"{type(exc).__name__}: {exc}"


def restore_node(kubectl: Kubectl, node: dict) -> None:
    """Put a deleted fake node back as it was (labels, taints without the notice, capacity)."""
    meta = node["metadata"]
    body = recreatable_node(node, {NOTICE_TAINT["key"]})
    taints = body["spec"]["taints"]
    if kubectl("get", "node", meta["name"], "--ignore-not-found", check=False).strip():
        kubectl(
            "patch", "node", meta["name"], "--type=merge", "-p", json.dumps({"spec": {"taints": taints}}), check=False
        )
    else:
        kubectl.apply(body)


async def escalation_attempt(base_url: str) -> tuple[int, str]:
    """The batch-only key asks for the interactive tier: the router must refuse."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        resp = await client.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": "hi", "max_tokens": 4},
            headers={"Authorization": f"Bearer {BATCH_KEY}", "X-Kubetier-Tier": "interactive"},
        )
        return resp.status_code, resp.text


# --------------------------------------------------------------------------- orchestration


class Step:
    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> Step:
        self.t0 = time.monotonic()
        print(f"[demo] {self.what} ...", flush=True)
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        took = time.monotonic() - self.t0
        print(f"[demo]   {'done' if exc_type is None else 'FAILED'} in {took:.1f}s", flush=True)


def wait_for(fn, what: str, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def ready_condition(ms: dict) -> dict | None:
    for cond in ms.get("status", {}).get("conditions", []):
        if cond.get("type") == "Ready":
            return cond
    return None


def router_servers(base_url: str) -> list[dict]:
    try:
        status = httpx.get(f"{base_url}/kubetier/status", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return []
    return status.get("models", {}).get(MODEL, {}).get("servers", [])


def router_tiers(base_url: str) -> dict:
    status = httpx.get(f"{base_url}/kubetier/status", timeout=5).json()
    return status.get("models", {}).get(MODEL, {}).get("tiers", {})


def print_report(stats: dict[str, TierStats], before: dict, after: dict) -> dict:
    """Client-side latencies and attainment per tier, with the router's counters for
    the phase (spilled onto a tighter tier's server, rejected, retried)."""
    print(
        f"{'tier':<12}{'SLO ttft/tpot':>15}{'sent':>6}{'ok':>5}{'ttft p50':>10}{'ttft p99':>10}"
        f"{'tpot p50':>10}{'tpot p99':>10}{'attain':>8}{'spilled':>8}{'rejected':>9}  errors"
    )
    summary = {}
    for name, st in stats.items():
        if not st.sent:
            continue
        delta = {
            k: after.get(name, {}).get(k, 0) - before.get(name, {}).get(k, 0)
            for k in ("spilled", "rejected", "retries", "migrations")
        }
        ok = len(st.ttfts)
        attain = st.met / st.sent if st.sent else None

        def ms(x: float | None) -> str:
            return f"{x:.0f}ms" if x is not None else "-"

        print(
            f"{name:<12}{f'{st.ttft_ms}/{st.tpot_ms}ms':>15}{st.sent:>6}{ok:>5}{ms(percentile(st.ttfts, 0.5)):>10}"
            f"{ms(percentile(st.ttfts, 0.99)):>10}{ms(percentile(st.tpots, 0.5)):>10}{ms(percentile(st.tpots, 0.99)):>10}"
            f"{(f'{attain:.0%}' if attain is not None else '-'):>8}{delta['spilled']:>8}{delta['rejected']:>9}"
            f"  {st.errors or ''}"
        )
        summary[name] = {
            "sent": st.sent,
            "completed": ok,
            "met_slo": st.met,
            "attainment": attain,
            "ttft_p50_ms": percentile(st.ttfts, 0.5),
            "ttft_p99_ms": percentile(st.ttfts, 0.99),
            "tpot_p50_ms": percentile(st.tpots, 0.5),
            "tpot_p99_ms": percentile(st.tpots, 0.99),
            "errors": st.errors,
            "router": delta,
        }
    return summary


# --------------------------------------------------------------------------- scale from zero

ZERO_SERVICE = "llama-demo-zero"
ZERO_MODEL = "llama-3.1-8b-zero"


def zero_service(namespace: str) -> dict:
    """One tier that may scale to zero. One tier, so its first request cannot spill onto a
    tighter tier's server: the router holds it until the autoscaler's server is up."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelService",
        "metadata": {"name": ZERO_SERVICE, "namespace": namespace},
        "spec": {
            "model": {"name": ZERO_MODEL, "source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "engine": {"kind": "simulator"},
            "resources": {"gpusPerReplica": 1, "cpu": "500m", "memory": "512Mi"},
            "latencyProfile": {"builtin": "llama-3.1-8b-h100"},
            "tiers": [
                {
                    "name": "batch",
                    "ttftMs": 60000,
                    "tpotMs": 200,
                    "priority": 10,
                    "onLate": "queue",
                    "replicas": {"min": 0, "max": 2},
                    "prewarm": {"scaleToZero": True, "keepAliveSeconds": 60},
                }
            ],
        },
    }


def scale_from_zero(kubectl: Kubectl, ns: str, base_url: str, cleanup: ExitStack) -> float:
    """Apply the zero service, wait until it is Ready at zero and the router knows it, send
    one streamed request and return its first-token time (a scale-from-zero)."""
    kubectl.apply(zero_service(ns))
    cleanup.callback(
        lambda: kubectl(
            "delete", "modelservice", ZERO_SERVICE, "-n", ns, "--ignore-not-found", "--wait=true", "--timeout=60s",
            check=False, timeout=90,
        )
    )  # fmt: skip

    def at_zero() -> bool:
        status = kubectl.json("get", "modelservice", ZERO_SERVICE, "-n", ns).get("status") or {}
        conds = {c.get("type"): c.get("status") for c in status.get("conditions") or ()}
        known = ZERO_MODEL in (httpx.get(f"{base_url}/kubetier/status", timeout=5).json().get("models") or {})
        return conds.get("ScaledToZero") == "True" and conds.get("Ready") == "True" and known

    wait_for(at_zero, f"{ZERO_SERVICE} Ready at zero replicas and known to the router", timeout=60)
    print(kubectl("get", "modelservice", ZERO_SERVICE, "-n", ns, check=False))
    body = {"model": ZERO_MODEL, "prompt": "Wake up. " * 8, "max_tokens": 16, "stream": True}
    start = time.monotonic()
    first = None
    tokens = 0
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"the scale-from-zero request got HTTP {resp.status_code}: {resp.read()[:200]!r}")
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:]).get("choices"):
                first = first or time.monotonic()
                tokens += 1
    if first is None:
        raise RuntimeError("the scale-from-zero request streamed no token")
    took = first - start
    print(f"[demo]   first token after {took:.2f} s (router held it while the autoscaler started a server)")
    print(kubectl("get", "modelservice", ZERO_SERVICE, "-n", ns, check=False))
    return took


def run(args: argparse.Namespace) -> int:
    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG")
    if not kubeconfig or not Path(kubeconfig).is_file():
        print(
            "kubetier demo: no cluster. Run `make demo` (it brings up a local cluster), or pass --kubeconfig.",
            file=sys.stderr,
        )
        return 2
    binary = find_kubectl()
    if not binary:
        print("kubetier demo: kubectl not found. Run `make cluster-up` to install it.", file=sys.stderr)
        return 2
    kubectl = Kubectl(binary, kubeconfig)
    ns = args.namespace
    workdir = Path(tempfile.mkdtemp(prefix="kubetier-demo-"))
    print(f"[demo] logs in {workdir}")
    from kubernetes import config as kconfig

    from kubetier.api.crdgen import all_crds
    from kubetier.localdev import LocalEngines
    from kubetier.localdev.engines import MANAGED_SELECTOR, wants_engine
    from kubetier.operator import rbac
    from kubetier.operator.modelservice.router_feed import attainment_from_status

    # The router's address is fixed up front: the operator reads per-tier attainment from it.
    port = args.router_port or free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    with ExitStack() as cleanup:
        with Step("installing CRDs (generated from the pydantic models)"):
            kubectl.apply(all_crds(), "--server-side", "--force-conflicts", "--field-manager=kubetier-demo")
            for crd in all_crds():
                kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd['metadata']['name']}")
        with Step(f"starting the operator under ServiceAccount {ns}/{OPERATOR_SA} (least-privilege RBAC)"):
            kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            role = rbac.cluster_role(f"kubetier-demo-operator-{ns}")
            kubectl.apply(service_account_objects(ns, OPERATOR_SA, role))
            # Runs last (ExitStack is LIFO): after the operator has removed its finalizer.
            cleanup.callback(
                lambda: kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)
            )
            cleanup.callback(
                lambda: kubectl(
                    "delete",
                    "clusterrolebinding,clusterrole",
                    role["metadata"]["name"],
                    "--ignore-not-found",
                    check=False,
                )
            )
            token = kubectl("create", "token", OPERATOR_SA, "-n", ns, "--duration=1h").strip()
            op_kubeconfig = token_kubeconfig(kubeconfig, token, workdir / "operator.kubeconfig", "kubetier-operator")
            operator = start_process(
                [
                    sys.executable,
                    "-m",
                    "kubetier.cli",
                    "operator",
                    "--kubeconfig",
                    str(op_kubeconfig),
                    "--namespace",
                    ns,
                    "--standalone",
                    "--router-status-url",
                    f"{base_url}/kubetier/status",
                ],
                workdir / "operator.log",
                # A short notice window (Karpenter's default here is 30 s) so that phase 3's
                # long streams outlive it and move to another server mid-stream.
                env={
                    "KUBETIER_NOTICE_WINDOW_KARPENTER": str(NOTICE_WINDOW_S),
                    "KUBETIER_EXPECTED_START_SECONDS": str(EXPECTED_START_S),
                },
            )
            cleanup.callback(stop_process, operator)
        with Step("applying a three-tier ModelService (engine: simulator) and its API-key Secrets"):
            kubectl.apply(demo_objects(ns))
            cleanup.callback(
                lambda: kubectl(
                    "delete",
                    "modelservice",
                    SERVICE,
                    "-n",
                    ns,
                    "--ignore-not-found",
                    "--wait=true",
                    "--timeout=60s",
                    check=False,
                    timeout=90,
                )
            )

            def ready():
                cond = ready_condition(kubectl.json("get", "modelservice", SERVICE, "-n", ns))
                return cond if cond and cond.get("status") == "True" else None

            try:
                wait_for(ready, "ModelService Ready", timeout=args.ready_timeout)
            except TimeoutError:
                print(kubectl("get", "modelservice", SERVICE, "-n", ns, "-o", "yaml", check=False))
                print((workdir / "operator.log").read_text()[-4000:])
                raise
            print(kubectl("get", "modelservice", "-n", ns, check=False))
            print(kubectl("get", "pods", "-n", ns, "-o", "wide", check=False))

        def running_pods() -> list[dict]:
            return [p for p in kubectl.items("pods", ns, MANAGED_SELECTOR) if wants_engine(p)]

        pods = running_pods()
        serving = [p for p in pods if p["metadata"]["labels"].get(ROLE_LABEL, ROLE_SERVING) == ROLE_SERVING]
        with Step(f"starting {len(pods)} engine simulators on loopback (one per pod)"):
            (workdir / "engines").mkdir()
            engines = LocalEngines(
                kconfig.new_client_from_config(config_file=kubeconfig), namespace=ns, log_dir=workdir / "engines"
            )
            engines.start()
            cleanup.callback(engines.close)
            # Compare names, not counts: a pod replaced meanwhile must not be waited for.
            engines.wait_for(
                lambda eps: {f"{ns}/{p['metadata']['name']}" for p in running_pods()} <= set(eps), timeout_s=90
            )
        with Step(f"starting the router on {base_url} (cluster discovery, local endpoints)"):
            router = start_process(
                [
                    sys.executable,
                    "-m",
                    "kubetier.cli",
                    "router",
                    "--port",
                    str(port),
                    "--namespace",
                    ns,
                    "--local-endpoints",
                    "--discovery-interval",
                    "1",
                ],
                workdir / "router.log",
                # a tier at zero is held for its TTFT plus this, and pushed to the operator
                env={"KUBECONFIG": kubeconfig, "KUBETIER_EXPECTED_START_SECONDS": str(EXPECTED_START_S)},
            )
            cleanup.callback(stop_process, router)
            try:
                wait_for(
                    lambda: sum(1 for s in router_servers(base_url) if s.get("ready")) >= len(serving),
                    f"the router to see {len(serving)} ready servers",
                    timeout=60,
                )
            except TimeoutError:
                print((workdir / "router.log").read_text()[-4000:])
                raise
        with Step("tier escalation: the batch-only key asks for the interactive tier"):
            status, body = asyncio.run(escalation_attempt(base_url))
            print(f"[demo]   router answered {status}: {body.strip()[:160]}")
            if status != 403:
                print("[demo] expected 403: the router let a key use a tier it is not entitled to", file=sys.stderr)
                return 1
        results = {}
        lost = refused = 0
        for i, phase in enumerate(phases(args.rate)):
            mix = ", ".join(f"{s.tier} {s.share:.0%}" for s in phase.streams)
            before = router_tiers(base_url)
            with Step(f"phase {i + 1}, {phase.name}: {phase.rate:g} req/s for {args.duration:g}s ({mix})"):
                stats = asyncio.run(drive_traffic(base_url, phase, args.duration, args.seed + i))
            results[phase.name] = print_report(stats, before, router_tiers(base_url))
            # An explicit 429 is the router refusing work it cannot serve in time (a
            # reported outcome); anything else that did not complete is a failure.
            refused += sum(s.errors.get("http 429", 0) for s in stats.values())
            lost += sum(s.sent - len(s.ttfts) - s.errors.get("http 429", 0) for s in stats.values())
        # Phase 3: a preemption notice on a spot node in the middle of traffic whose batch
        # answers (1,500 tokens) outlive the notice window.
        steady = Phase(
            "preemption notice",
            args.rate,
            (Stream("interactive", 0.3, 64), Stream("standard", 0.3, 96), Stream("batch", 0.4, 1500)),
        )
        notice = NoticeReport()
        nodes_before = {n["metadata"]["name"]: n for n in kubectl.json("get", "nodes")["items"]}
        before = router_tiers(base_url)
        notice_at = args.duration / 3
        with Step(
            f"phase 3, preemption notice: a spot node is reclaimed {notice_at:g}s into {args.duration:g}s of traffic"
        ):
            worker = threading.Thread(
                target=preemption_notice, args=(kubectl, ns, base_url, notice_at, notice), daemon=True
            )
            worker.start()
            stats = asyncio.run(drive_traffic(base_url, steady, args.duration, args.seed + 7))
            worker.join(timeout=90)
            if notice.node:
                cleanup.callback(restore_node, kubectl, nodes_before[notice.node])
        after = router_tiers(base_url)
        results["preemption notice"] = print_report(stats, before, after)
        migrated = sum(
            (after.get(t, {}) or {}).get("migrations", 0) - (before.get(t, {}) or {}).get("migrations", 0)
            for t in after
        )
        failed = sum(s.sent - len(s.ttfts) - s.errors.get("http 429", 0) for s in stats.values())
        incomplete = sum(s.incomplete for s in stats.values())
        lost += failed + incomplete
        refused += sum(s.errors.get("http 429", 0) for s in stats.values())
        drained = f"{notice.drained_s:.1f}s" if notice.drained_s is not None else "n/a"
        print(
            f"[demo]   notice on {notice.node or '-'} ({len(notice.pods)} pod(s): {', '.join(notice.pods)}): "
            f"{notice.inflight_at_notice} request(s) in flight at the notice, {migrated} stream(s) migrated, "
            f"{failed} failed, {incomplete} incomplete; drained in {drained}; replacements: "
            + (", ".join(f"{p} on {c}" for p, c in sorted(notice.replacements.items())) or "none seen")
        )
        if notice.error:
            print(f"[demo]   preemption step: {notice.error}", file=sys.stderr)
            lost += 1
        results["preemption notice"]["notice"] = {
            "node": notice.node,
            "pods": notice.pods,
            "inflightAtNotice": notice.inflight_at_notice,
            "migrated": migrated,
            "failed": failed,
            "incomplete": incomplete,
            "drainedSeconds": notice.drained_s,
            "replacements": notice.replacements,
        }
        with Step("waiting for the operator to publish the router's attainment in status"):
            router_status = httpx.get(f"{base_url}/kubetier/status", timeout=5).json()
            measured = attainment_from_status(router_status, MODEL)
            if not measured:
                # Every tier got traffic above: an empty tally means the router lost its
                # counts, and "-/-/-" in status would be a demo that proved nothing.
                raise RuntimeError(
                    f"the router reports no attainment for {MODEL} after the traffic: "
                    f"{json.dumps(router_status.get('models', {}).get(MODEL, {}).get('tiers'))}"
                )
            expected = "/".join(f"{round(measured[t[0]], 2):g}" if t[0] in measured else "-" for t in TIERS)
            wait_for(
                lambda: (
                    kubectl.json("get", "modelservice", SERVICE, "-n", ns).get("status", {}).get("attainmentSummary")
                    == expected
                ),
                f"status.attainmentSummary to read {expected}",
                timeout=40,
            )
            # The routers' mid-stream migrations (phase 3's token-level moves) in status too.
            counted = (router_status.get("models", {}).get(MODEL, {}) or {}).get("tiers", {}) or {}
            want_migrations = {t: int(c.get("migrations", 0)) for t, c in counted.items()}

            def status_migrations() -> dict[str, int]:
                tiers = kubectl.json("get", "modelservice", SERVICE, "-n", ns).get("status", {}).get("tiers", [])
                return {t["name"]: int(t.get("migrations", 0)) for t in tiers if t["name"] in want_migrations}

            wait_for(
                lambda: status_migrations() == want_migrations,
                f"status.tiers[].migrations to read {want_migrations}",
                timeout=40,
            )
            print(f"[demo]   status.tiers[].migrations: {status_migrations()}")
            results["preemption notice"]["statusMigrations"] = status_migrations()
        with Step(f"scale from zero: a one-tier ModelService with replicas.min 0 ({ZERO_SERVICE})"):
            zero_first_token_s = scale_from_zero(kubectl, ns, base_url, cleanup)
            results["scaleFromZero"] = {"firstTokenSeconds": round(zero_first_token_s, 2)}
        print(kubectl("get", "modelservice", "-n", ns, check=False))
        print(
            f"\n[demo] every request streamed through the router to a loopback engine; "
            f"refused with 429 (could not meet their TTFT): {refused}; failed or lost: {lost}"
        )
        if args.output:
            Path(args.output).write_text(json.dumps({"phases": results}, indent=2))
            print(f"[demo] summary written to {args.output}")
        if args.keep:
            cleanup.pop_all()
            print(f"[demo] --keep: operator, router and engines are still running; see {workdir}")
            return 0
    if lost == 0:
        shutil.rmtree(workdir, ignore_errors=True)  # kept on failure, for its logs
        return 0
    print(f"[demo] logs kept in {workdir}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="kubetier demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kubeconfig", help="cluster to run on (default: $KUBECONFIG; `make demo` sets it)")
    p.add_argument("--namespace", default="kubetier-demo")
    p.add_argument("--rate", type=float, default=8.0, help="requests per second (Poisson)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of traffic per phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--router-port", type=int, default=0, help="default: a free port on 127.0.0.1")
    p.add_argument("--ready-timeout", type=float, default=120.0)
    p.add_argument("--output", help="write a JSON summary here")
    p.add_argument("--keep", action="store_true", help="leave everything running at the end")
    return run(p.parse_args(argv))
