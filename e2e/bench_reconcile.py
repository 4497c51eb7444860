"""Reconcile benchmark on a real apiserver: how fast ModelService changes reach their
children, and how many API calls the operator makes, with N ModelServices.

    export KUBECONFIG=$(.venv/bin/python e2e/cluster/cluster.py kubeconfig-path)
    .venv/bin/python e2e/bench_reconcile.py --services 100 --json bench-100.json

It installs the CRDs, starts ``kubetier operator --namespace <bench ns> --standalone``
as a subprocess (the real CLI, the kubeconfig's identity), and then:

1. **create**: creates N ModelServices (simulator engine, one tier, replicas min 0 /
   max 1 with scaleToZero, no GPUs: no pods, so the fake fleet is no limit) and measures,
   per service, the time from its create call returning until its Deployment is seen
   through a watch (apply-to-children latency under a burst);
   (A warm-up service created first makes sure the operator is up before timing.)
2. **steady**: once every status is written and the operator has been quiet for a few
   seconds, counts API requests over a window: the operator's own (from its log, one
   line per request its HTTP client makes) and the apiserver's ``apiserver_request_total``
   (every client: the operator's kopf watches, controllers, kwok), as calls per minute;
3. **update**: changes ``spec.engine.args`` of K services one at a time and measures the
   time until the Deployment's pod template carries the change (apply-to-children
   latency at steady state, N services present).

It prints the figures and writes JSON; it asserts nothing about time (figures depend on
the machine). ``e2e/test_operator_scale.py`` runs a small version and asserts the one
thing that must hold anywhere: zero writes at steady state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "e2e"))

from kubetier.kube import KubeClient  # noqa: E402
from kubetier.kube.informer import Informer  # noqa: E402
from kubetier.stats import percentile  # noqa: E402

WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "CREATE", "UPDATE"}
# What the operator writes; writes to these during the steady window are the operator's
# (controllers write deployments/status, a separate subresource).
OPERATOR_RESOURCES = {
    "kubetier.io/modelservices",
    "kubetier.io/modelservices/status",
    "apps/deployments",
    "services",
    "configmaps",
    "policy/poddisruptionbudgets",
    "events",
}
_HTTPX_LINE = re.compile(r"HTTP Request: (?P<method>[A-Z]+) (?P<url>\S+)")
_METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def bench_service(name: str, namespace: str, tiers: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "kubetier.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": f"m-{name}", "source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "engine": {"kind": "simulator", "port": 8000},
            "resources": {"gpusPerReplica": 0, "cpu": "100m", "memory": "128Mi"},
            "latencyProfile": {"builtin": "llama-3.1-8b-h100"},
            "tiers": [
                {
                    "name": f"t{i}",
                    "ttftMs": 300 * (i + 1),
                    "tpotMs": 30 * (i + 1),
                    "priority": 100 - i,
                    "replicas": {"min": 0, "max": 1},
                    "prewarm": {"scaleToZero": True},
                }
                for i in range(tiers)
            ],
        },
    }


def apiserver_counts(metrics_text: str) -> Counter[tuple[str, str]]:
    """apiserver_request_total summed over codes: (verb, group/resource[/subresource])."""
    out: Counter[tuple[str, str]] = Counter()
    for line in metrics_text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        what = "/".join(x for x in (labels.get("group"), labels.get("resource"), labels.get("subresource")) if x)
        out[(labels.get("verb", ""), what)] += int(float(m["value"]))
    return out


def operator_counts(log_text: str) -> Counter[tuple[str, str]]:
    """The operator's own requests from its log: (method, resource path without names)."""
    out: Counter[tuple[str, str]] = Counter()
    for m in _HTTPX_LINE.finditer(log_text):
        path = m["url"].split("://", 1)[-1].split("/", 1)[-1].split("?")[0]
        parts = path.split("/")
        parts = parts[2:] if parts[0] == "api" else parts[3:]
        if len(parts) > 1 and parts[0] == "namespaces":
            parts = parts[2:]
        kind = parts[0] if parts else "?"
        sub = parts[2] if len(parts) > 2 else ""
        verb = m["method"]
        if verb == "GET":
            verb = "WATCH" if "watch=true" in m["url"] else ("GET" if len(parts) > 1 else "LIST")
        out[(verb, f"{kind}/{sub}" if sub else kind)] += 1
    return out


def delta(after: Counter[tuple[str, str]], before: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
    return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0})


def per_minute(counts: Counter[tuple[str, str]], seconds: float) -> dict[str, float]:
    return {f"{v} {r}": round(n * 60.0 / seconds, 1) for (v, r), n in sorted(counts.items())}


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 0.5) or 0.0, 3),
        "p99_s": round(percentile(values, 0.99) or 0.0, 3),
        "max_s": round(max(values), 3) if values else None,
    }


@dataclass
class Bench:
    api: KubeClient
    namespace: str
    log_path: Path
    seen: dict[str, float] = field(default_factory=dict)  # Deployment name -> first seen
    args_seen: dict[tuple[str, str], float] = field(default_factory=dict)  # (deployment, arg) -> seen

    def on_deployment(self, _type: str, _old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None:
            return
        now = time.monotonic()
        name = new["metadata"]["name"]
        self.seen.setdefault(name, now)
        for container in new["spec"]["template"]["spec"]["containers"]:
            for arg in container.get("command") or ():
                if arg.startswith("--bench-rev="):
                    self.args_seen.setdefault((name, arg), now)

    def operator_log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


async def quiet(bench: Bench, quiet_s: float, timeout_s: float) -> None:
    """Until the operator has made no write for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        writes = sum(n for (v, _r), n in operator_counts(bench.operator_log()).items() if v in WRITE_VERBS)
        if writes != last:
            last, since = writes, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the operator kept writing for {timeout_s:.0f} s")


async def run(
    services: int,
    tiers: int = 1,
    window_s: float = 60.0,
    updates: int = 20,
    namespace: str | None = None,
    workdir: Path | None = None,
    start_operator: bool = True,
    create_concurrency: int = 16,
    operator_source: Path | None = None,
) -> dict[str, Any]:
    namespace = namespace or f"bench-{uuid.uuid4().hex[:6]}"
    workdir = workdir or Path(tempfile.mkdtemp(prefix="kubetier-bench-"))
    log_path = workdir / "operator.log"
    log_path.touch()
    api = KubeClient.connect(field_manager="kubetier-bench")
    bench = Bench(api, namespace, log_path)
    operator: subprocess.Popen[bytes] | None = None
    deployments = Informer(api, "Deployment", namespace, "app.kubernetes.io/managed-by=kubetier")
    statuses = Informer(api, "ModelService", namespace)
    deployments.on_change(bench.on_deployment)
    tasks: list[asyncio.Task[None]] = []
    result: dict[str, Any] = {
        "services": services,
        "tiers": tiers,
        "namespace": namespace,
        "operator_source": str(operator_source or REPO),
    }
    try:
        await api.create("Namespace", None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        if start_operator:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            env.pop("KUBERNETES_SERVICE_HOST", None)
            if operator_source is not None:  # another checkout's operator, for a side-by-side baseline
                env["PYTHONPATH"] = str(operator_source / "operator")
            with open(log_path, "ab") as out:
                operator = subprocess.Popen(
                    [sys.executable, "-m", "kubetier.cli", "operator", "--namespace", namespace, "--standalone"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
        tasks = [asyncio.create_task(deployments.run()), asyncio.create_task(statuses.run())]
        await asyncio.wait_for(asyncio.gather(deployments.synced.wait(), statuses.synced.wait()), 30)

        # The operator is up and its watches synced once a warm-up service has children.
        await api.create("ModelService", namespace, bench_service("warmup", namespace, tiers))
        await wait_for(lambda: "warmup-t0" in bench.seen, 120, "the operator to start (warm-up service)")

        # 1. create
        created: dict[str, float] = {}
        gate = asyncio.Semaphore(create_concurrency)

        async def create(i: int) -> None:
            name = f"svc-{i:04d}"
            async with gate:
                await api.create("ModelService", namespace, bench_service(name, namespace, tiers))
                created[name] = time.monotonic()

        t0 = time.monotonic()
        await asyncio.gather(*(create(i) for i in range(services)))
        create_s = time.monotonic() - t0
        expected = {f"svc-{i:04d}-t{j}": f"svc-{i:04d}" for i in range(services) for j in range(tiers)}
        await wait_for(lambda: all(d in bench.seen for d in expected), 120 + services * 2.0, "every Deployment")
        converge_s = max(bench.seen[d] for d in expected) - t0
        latencies = [max(bench.seen[f"{ms}-t{j}"] for j in range(tiers)) - created[ms] for ms in created]
        result["create"] = {
            **summary(latencies),
            "create_calls_s": round(create_s, 2),
            "all_children_s": round(converge_s, 2),
        }

        def all_statused() -> bool:
            items = statuses.items()
            return len(items) == services + 1 and all(
                (o.get("status") or {}).get("observedGeneration") == o["metadata"].get("generation") for o in items
            )

        await wait_for(all_statused, 120 + services * 2.0, "every status written")
        try:
            await quiet(bench, quiet_s=5.0, timeout_s=120 + services * 1.0)
            result["quiet"] = True
        except TimeoutError:
            # An operator that never stops writing (a baseline may): measure it anyway.
            result["quiet"] = False
        result["settled_s"] = round(time.monotonic() - t0, 2)

        # 2. steady state
        op_before = operator_counts(bench.operator_log())
        apiserver_before = apiserver_counts(await api.get_raw("/metrics"))
        t_window = time.monotonic()
        await asyncio.sleep(window_s)
        apiserver_after = apiserver_counts(await api.get_raw("/metrics"))
        seconds = time.monotonic() - t_window
        op = delta(operator_counts(bench.operator_log()), op_before)
        server = delta(apiserver_after, apiserver_before)
        result["steady"] = {
            "window_s": round(seconds, 1),
            "operator_requests_per_min": per_minute(op, seconds),
            "operator_requests_per_min_total": round(sum(op.values()) * 60 / seconds, 1),
            "operator_writes": sum(n for (v, _r), n in op.items() if v in WRITE_VERBS),
            "apiserver_requests_per_min": per_minute(server, seconds),
            "apiserver_requests_per_min_total": round(sum(server.values()) * 60 / seconds, 1),
            "apiserver_writes_to_operator_resources": sum(
                n for (v, r), n in server.items() if v in WRITE_VERBS and r in OPERATOR_RESOURCES
            ),
        }

        # 3. updates, one at a time, N services present
        update_latencies = []
        for k in range(min(updates, services)):
            name = f"svc-{k * max(1, services // max(1, updates)):04d}"
            arg = f"--bench-rev={k}"
            await api.patch("ModelService", namespace, name, {"spec": {"engine": {"args": [arg]}}})
            t_patch = time.monotonic()
            await wait_for(
                lambda name=name, arg=arg: all((f"{name}-t{j}", arg) in bench.args_seen for j in range(tiers)),
                30,
                f"{name} updated",
                poll_s=0.01,
            )
            update_latencies.append(max(bench.args_seen[(f"{name}-t{j}", arg)] for j in range(tiers)) - t_patch)
            await asyncio.sleep(0.2)
        result["update"] = summary(update_latencies)
        result["operator_alive"] = operator is None or operator.poll() is None
        return result
    finally:
        for task in tasks:
            task.cancel()
        if operator is not None and operator.poll() is None:
            os.killpg(operator.pid, 15)
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, 9)
        await api.aclose()
        result["operator_log"] = str(log_path)


def delete_namespace(namespace: str) -> None:
    """Remove the bench's ModelServices' finalizers (the operator is gone) and the namespace."""

    async def go() -> None:
        api = KubeClient.connect(field_manager="kubetier-bench")
        try:
            for ms in await api.list("ModelService", namespace):
                if ms["metadata"].get("finalizers"):
                    await api.patch(
                        "ModelService", namespace, ms["metadata"]["name"], {"metadata": {"finalizers": None}}
                    )
            await api.delete("Namespace", None, namespace)
        finally:
            await api.aclose()

    asyncio.run(go())


def print_report(result: dict[str, Any]) -> None:
    c, s, u = result["create"], result["steady"], result["update"]
    print(f"ModelServices: {result['services']} (tiers each: {result['tiers']}), namespace {result['namespace']}")
    print(f"operator from: {result['operator_source']}")
    print(
        f"create burst: apply-to-children p50 {c['p50_s']} s, p99 {c['p99_s']} s, max {c['max_s']} s; "
        f"all children after {c['all_children_s']} s; "
        + (f"settled after {result['settled_s']} s" if result["quiet"] else "never quiet (writes kept coming)")
    )
    print(f"single updates at steady state ({u['n']}): p50 {u['p50_s']} s, p99 {u['p99_s']} s, max {u['max_s']} s")
    print(
        f"steady state over {s['window_s']} s: operator {s['operator_requests_per_min_total']} requests/min, "
        f"{s['operator_writes']} writes; apiserver (all clients) {s['apiserver_requests_per_min_total']} requests/min, "
        f"{s['apiserver_writes_to_operator_resources']} writes to operator-owned resources"
    )
    for what, n in s["operator_requests_per_min"].items():
        print(f"  operator   {what}: {n}/min")
    for what, n in s["apiserver_requests_per_min"].items():
        print(f"  apiserver  {what}: {n}/min")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--services", type=int, default=100, help="ModelServices to create (default 100)")
    parser.add_argument("--tiers", type=int, default=1, help="tiers per ModelService (default 1)")
    parser.add_argument("--window", type=float, default=60.0, help="steady-state window, seconds (default 60)")
    parser.add_argument("--updates", type=int, default=20, help="single-service updates to time (default 20)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--operator-source",
        type=Path,
        help="run the operator from this checkout instead (e.g. a worktree of an older commit), for a baseline",
    )
    parser.add_argument("--keep", action="store_true", help="keep the namespace afterwards")
    args = parser.parse_args(argv)
    if not os.environ.get("KUBECONFIG"):
        parser.error(
            "KUBECONFIG is not set: export KUBECONFIG=$(.venv/bin/python e2e/cluster/cluster.py kubeconfig-path)"
        )
    from e2e_support import find_kubectl

    kubectl = find_kubectl()
    if kubectl is None:
        parser.error("kubectl not found: run .venv/bin/python e2e/cluster/cluster.py install")
    crd_files = sorted(p for p in (REPO / "crds").glob("*.yaml"))
    subprocess.run(
        [kubectl, "apply", "--server-side", "--force-conflicts", "--field-manager=kubetier-bench"]
        + [a for f in crd_files for a in ("-f", str(f))],
        check=True,
        capture_output=True,
    )
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        result = asyncio.run(
            run(
                args.services,
                args.tiers,
                args.window,
                args.updates,
                namespace=namespace,
                operator_source=args.operator_source,
            )
        )
    finally:
        if not args.keep:
            delete_namespace(namespace)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
