"""A real Prometheus (built from the Go module proxy) scrapes the real operator while it
reconciles a ModelService on the local cluster, with kubetier's generated rules loaded:
the reconcile counter rises, the autoscaler's desired replicas appear per tier (and go
when the ModelService is deleted), and the operator's alert rules evaluate on live data
(no error, KubetierOperatorAbsent quiet because the operator is scraped).

The operator is the session's `kubetier operator` (e2e/conftest.py), which serves its
metrics on a loopback port (OperatorProcess.metrics_port). The router and engines under a
real Prometheus: tests/observability/test_live_prometheus.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from e2e_support import Kubectl, free_port, model_service, tier, wait_until
from go_tool_binaries import go_tool
from kubetier.localdev.processes import started_process
from kubetier.observability.main import RULES_FILE, rules_yaml


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return go_tool("prometheus")


@contextlib.contextmanager
def prometheus_scraping(binary: str, targets: list[str], tmp: Path) -> Iterator[str]:
    """Prometheus on loopback scraping ``targets`` every second, the generated rules loaded;
    yields its API base URL."""
    port = free_port()
    (tmp / RULES_FILE).write_text(rules_yaml())
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [RULES_FILE],
                "scrape_configs": [{"job_name": "kubetier-operator", "static_configs": [{"targets": targets}]}],
            }
        )
    )
    argv = [
        binary,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with started_process(argv, tmp / "prometheus.log", stop_timeout=10):
        wait_until(
            lambda: get_json(f"http://127.0.0.1:{port}/api/v1/status/buildinfo").get("status") == "success",
            "prometheus ready",
            timeout=60,
            describe=lambda: (tmp / "prometheus.log").read_text()[-3000:],
        )
        yield f"http://127.0.0.1:{port}/api/v1"


def get_json(url: str) -> dict:
    """The JSON answer, or {} while the server is not listening yet."""
    try:
        res = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return {}
    out: dict = res.json() if res.status_code == 200 else {}
    return out


def query(api: str, expr: str) -> list[dict]:
    try:
        res = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
    except httpx.HTTPError:
        return []
    assert res["status"] == "success", res
    result: list[dict] = res["data"]["result"]
    return result


def scalar(api: str, expr: str) -> float | None:
    res = query(api, expr)
    return float(res[0]["value"][1]) if res else None


def test_prometheus_scrapes_the_operator_while_it_reconciles(
    kubectl: Kubectl, crds, operator, gpu_nodes, namespace, prometheus_binary, tmp_path
):
    target = f"127.0.0.1:{operator.metrics_port}"
    with prometheus_scraping(prometheus_binary, [target], tmp_path) as api:

        def operator_up() -> bool:
            active = (get_json(f"{api}/targets").get("data") or {}).get("activeTargets") or []
            return len(active) == 1 and active[0]["health"] == "up"

        wait_until(operator_up, f"the operator scraped at {target}", timeout=60)
        ok = 'sum(kubetier_operator_reconciles_total{controller="modelservice", result="ok"})'
        # The series exists from the start (0 before any reconcile): a tuple, since 0.0 is falsy.
        (before,) = wait_until(lambda: (v := scalar(api, ok)) is not None and (v,), "the reconcile counter scraped")
        assert scalar(api, "kubetier_operator_info") == 1.0

        ms = model_service("obs", namespace, [tier("chat", 500, 50, 10, replicas=1, max_replicas=3)])
        kubectl.apply(ms)
        after = wait_until(
            lambda: (v := scalar(api, ok)) is not None and v > before and v,
            "a successful ModelService reconcile counted",
            timeout=90,
        )
        assert after > before
        # The reconcile durations are a histogram with observations.
        assert (
            scalar(api, 'sum(kubetier_operator_reconcile_duration_seconds_count{controller="modelservice"})') or 0
        ) > 0

        # No router, no demand: the autoscaler holds the tier at replicas.min.
        desired = f'kubetier_operator_desired_replicas{{namespace="{namespace}", modelservice="obs", tier="chat"}}'
        assert wait_until(lambda: scalar(api, desired), "desired replicas for the tier", timeout=60) == 1.0

        # The operator's alert rules evaluate on live data without error; none is active.
        def operator_rules() -> list[dict]:
            groups = (get_json(f"{api}/rules").get("data") or {}).get("groups") or []
            [group] = [g for g in groups if g["name"] == "kubetier.operator"]
            rules: list[dict] = group["rules"]
            return rules if all(r.get("lastEvaluation", "").startswith("20") for r in rules) else []

        rules = wait_until(operator_rules, "the operator rules evaluated", timeout=60)
        assert {r["name"] for r in rules} >= {"KubetierOperatorReconcileErrors", "KubetierOperatorAbsent"}
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        assert all(r["state"] == "inactive" for r in rules), [(r["name"], r["state"]) for r in rules]

        # Deleted: the operator stops exporting the ModelService's desired replicas.
        kubectl("delete", "modelservice", "obs", "-n", namespace, "--wait=true", "--timeout=60s")
        wait_until(lambda: query(api, desired) == [], "desired replicas gone after the delete", timeout=60)
    assert operator.alive(), operator.log_tail()
