"""A real Prometheus (built from the Go module proxy) scrapes a live router and engine
simulators on loopback, and kubetier's generated rules evaluate against that live data:
the failing tier's burn-rate alert becomes active, the healthy tier's does not, and a
stopped engine activates KubetierEngineNotReady.

Alerts with a `for:` duration are checked in state pending-or-firing: the expression is
true on live data (waiting out `for: 2m` would only test Prometheus' clock). The operator
is scraped by a real Prometheus on the local cluster, where it has an API server to
reconcile against: e2e/test_operator_metrics.py."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

import httpx
import pytest
import yaml

from kubetier.localdev.processes import free_loopback_port, kubetier_command, started_process
from kubetier.observability.main import RULES_FILE, rules_yaml

# Two real engines start in about a minute each on an idle 2-core machine, several under load.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def wait_until(check: Callable[[], object], what: str, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, IndexError, ValueError):
            last = check()
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def test_prometheus_scrapes_router_and_engines_and_rules_fire(prometheus, tmp_path):
    e1, e2, router, prom = free_loopback_port(), free_loopback_port(), free_loopback_port(), free_loopback_port()
    (tmp_path / "router.yaml").write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "m",
                        "profile": "llama-3.1-8b-h100",
                        "tiers": [
                            # 1 ms to the first token cannot be met: every request misses.
                            {"name": "impossible", "ttftMs": 1, "tpotMs": 1, "priority": 100, "meanOutputTokens": 4},
                            {"name": "relaxed", "ttftMs": 20000, "tpotMs": 2000, "priority": 10, "meanOutputTokens": 4},
                        ],
                        "servers": [
                            {"url": f"http://127.0.0.1:{e1}", "tier": "impossible", "id": "engine-1"},
                            {"url": f"http://127.0.0.1:{e2}", "tier": "relaxed", "id": "engine-2"},
                        ],
                    }
                ]
            }
        )
    )
    (tmp_path / RULES_FILE).write_text(rules_yaml())
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [RULES_FILE],
                "scrape_configs": [
                    {"job_name": "kubetier-router", "static_configs": [{"targets": [f"127.0.0.1:{router}"]}]},
                    {
                        "job_name": "kubetier-engines",
                        "static_configs": [{"targets": [f"127.0.0.1:{e1}", f"127.0.0.1:{e2}"]}],
                    },
                ],
            }
        )
    )
    api = f"http://127.0.0.1:{prom}/api/v1"
    with contextlib.ExitStack() as stack:
        engine1 = stack.enter_context(
            started_process(
                kubetier_command("engine-sim", "--port", str(e1), "--model", "m", "--time-scale", "10"),
                tmp_path / "e1.log",
            )
        )
        stack.enter_context(
            started_process(
                kubetier_command("engine-sim", "--port", str(e2), "--model", "m", "--time-scale", "10"),
                tmp_path / "e2.log",
            )
        )
        stack.enter_context(
            started_process(
                kubetier_command(
                    "router",
                    "--port",
                    str(router),
                    "--config",
                    str(tmp_path / "router.yaml"),
                    "--scrape-interval",
                    "0.5",
                ),
                tmp_path / "router.log",
            )
        )
        stack.enter_context(
            started_process(
                [
                    prometheus,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom}",
                ],
                tmp_path / "prometheus.log",
            )
        )
        base = f"http://127.0.0.1:{router}"
        wait_until(lambda: httpx.get(base + "/health", timeout=2).status_code == 200, "router up")
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{prom}/-/ready", timeout=2).status_code == 200, "prometheus ready"
        )

        def targets_up() -> bool:
            active = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
            return len(active) == 3 and all(t["health"] == "up" for t in active)

        wait_until(targets_up, "router and both engines scraped", timeout=90)

        # Bounded traffic: 40 requests per tier, 4 tokens each. Counters with labels appear
        # on their first increment, and rate() needs an increase between two scrapes: send a
        # first request per tier, wait until Prometheus has those series, then the rest.
        outcomes: dict[str, list[int]] = {"impossible": [], "relaxed": []}
        with httpx.Client(timeout=60) as client:
            for tier in outcomes:
                r = client.post(
                    base + "/v1/completions",
                    json={"model": "m", "prompt": "hello there", "max_tokens": 4},
                    headers={"x-kubetier-tier": tier},
                )
                outcomes[tier].append(r.status_code)

            def series_for_both_tiers() -> bool:
                res = httpx.get(f"{api}/query", params={"query": "kubetier_router_requests_total"}, timeout=5).json()[
                    "data"
                ]["result"]
                return {s["metric"].get("tier") for s in res} >= set(outcomes)

            wait_until(series_for_both_tiers, "request counters scraped before the main traffic", timeout=60)
            for _ in range(39):
                for tier in outcomes:
                    r = client.post(
                        base + "/v1/completions",
                        json={"model": "m", "prompt": "hello there", "max_tokens": 4},
                        headers={"x-kubetier-tier": tier},
                    )
                    outcomes[tier].append(r.status_code)
        assert set(outcomes["relaxed"]) == {200}, outcomes

        def query(expr: str) -> dict[str, float]:
            res = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()["data"]["result"]
            return {s["metric"].get("tier", s["metric"].get("server", "")): float(s["value"][1]) for s in res}

        # The recording rule computes the miss ratio per tier from the live counters.
        ratios = wait_until(
            lambda: (r := query("kubetier:tier_slo_errors:ratio_rate5m")) and len(r) == 2 and r,
            "recorded miss ratios for both tiers",
        )
        assert ratios["impossible"] > 0.9 and ratios["relaxed"] < 0.1, ratios
        # The engines' own vLLM-named metrics are scraped too.
        assert wait_until(lambda: query("sum by (instance) (vllm:num_requests_running)"), "engine metrics")

        def active_alerts() -> list[dict]:
            return httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]

        def burn_for(tier: str) -> list[dict]:
            return [
                a
                for a in active_alerts()
                if a["labels"]["alertname"] == "KubetierTierAttainmentBurnRate" and a["labels"]["tier"] == tier
            ]

        burning = wait_until(lambda: burn_for("impossible"), "burn-rate alert on the failing tier")
        assert all(a["state"] in ("pending", "firing") for a in burning)
        assert burn_for("relaxed") == []

        # Stop one engine: the router marks it unusable and the rule sees it.
        os.killpg(engine1.pid, signal.SIGTERM)
        not_ready = wait_until(
            lambda: [
                a
                for a in active_alerts()
                if a["labels"]["alertname"] == "KubetierEngineNotReady" and a["labels"]["server"] == "engine-1"
            ],
            "KubetierEngineNotReady for the stopped engine",
            timeout=90,
        )
        assert not_ready[0]["labels"]["tier"] == "impossible"
