"""Attainment flows from the router's status endpoint into ModelService status."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubetier.operator.modelservice.router_feed import (
    RouterStatusFeed,
    aggregate_status,
    attainment_from_status,
    fetch_attainment,
    replica_urls,
    router_service,
)

STATUS = {
    "models": {
        "llama": {
            "tiers": {
                "interactive": {"requests": 40, "completed": 40, "sloMet": 39, "failed": 0, "attainmentPercent": 97.5},
                "batch": {"requests": 3, "completed": 3, "sloMet": 3, "failed": 0, "attainmentPercent": 100.0},
                "standard": {"requests": 9, "completed": 8, "sloMet": 8, "failed": 1, "attainmentPercent": 88.89},
            }
        }
    }
}


def test_tiers_with_enough_finished_requests_are_reported():
    assert attainment_from_status(STATUS, "llama") == {"interactive": 97.5, "standard": 88.89}


def test_a_tier_shedding_load_is_not_reported_at_100_percent():
    # Every request the router let through met its SLO, but it refused 30 with 429:
    # those are misses (kubetier.policy.attainment), whatever the router's own figure says.
    shedding = {"requests": 40, "completed": 10, "sloMet": 10, "rejected": 30, "failed": 0, "attainmentPercent": 100.0}
    status = {"models": {"llama": {"tiers": {"interactive": shedding}}}}
    assert attainment_from_status(status, "llama") == {"interactive": 25.0}
    # Refusals alone count toward the minimum sample size.
    only_refused = {"requests": 6, "completed": 0, "sloMet": 0, "rejected": 6}
    assert attainment_from_status({"models": {"llama": {"tiers": {"batch": only_refused}}}}, "llama") == {"batch": 0.0}


def test_a_status_document_that_is_not_understood_reports_nothing():
    assert attainment_from_status({"models": {"llama": {"tiers": {"x": {"completed": "many"}}}}}, "llama") == {}


def test_other_models_and_empty_documents_report_nothing():
    assert attainment_from_status(STATUS, "other") == {}
    assert attainment_from_status({}, "llama") == {}


def _serve(body: bytes, status: int = 200, host: str = "127.0.0.1", port: int = 0):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_fetch_over_http_and_unreachable_router_is_unknown_not_an_error():
    server = _serve(json.dumps(STATUS).encode())
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/kubetier/status"
        assert asyncio.run(fetch_attainment(url, "llama"))["interactive"] == 97.5
    finally:
        server.shutdown()
    broken = _serve(b"not json", status=500)
    try:
        assert asyncio.run(fetch_attainment(f"http://127.0.0.1:{broken.server_address[1]}/", "llama")) == {}
    finally:
        broken.shutdown()
    assert asyncio.run(fetch_attainment(f"http://127.0.0.1:{server.server_address[1]}/", "llama", 0.5)) == {}


def _replica(sent: int, met: int, completed: int) -> dict:
    tally = {"requests": sent, "completed": completed, "failed": 0, "sloMet": met}
    tally["attainmentPercent"] = round(100.0 * met / completed, 2) if completed else None
    return {"models": {"llama": {"tiers": {"interactive": tally}}}}


def test_replicas_are_summed_and_attainment_recomputed_over_all_requests():
    # One replica saw 10 requests at 100 %, the other 90 at 50 %: 55 % overall, not 75 %.
    merged = aggregate_status([_replica(10, 10, 10), _replica(90, 45, 90)])
    tally = merged["models"]["llama"]["tiers"]["interactive"]
    assert (tally["requests"], tally["sloMet"], tally["attainmentPercent"]) == (100, 55, 55.0)
    assert attainment_from_status(merged, "llama") == {"interactive": 55.0}
    assert aggregate_status([_replica(0, 0, 0)])["models"]["llama"]["tiers"]["interactive"]["attainmentPercent"] is None


def test_a_replica_whose_document_does_not_parse_is_left_out():
    broken = {"models": {"llama": {"tiers": {"interactive": {"completed": "lots"}}}}}
    merged = aggregate_status([_replica(10, 9, 10), broken])
    assert merged["replicas"] == 2
    assert merged["models"]["llama"]["tiers"]["interactive"]["attainmentPercent"] == 90.0
    # Refusals summed over replicas are misses too.
    shedding = {"models": {"llama": {"tiers": {"interactive": {"requests": 10, "rejected": 10}}}}}
    merged = aggregate_status([_replica(10, 10, 10), shedding])
    assert merged["models"]["llama"]["tiers"]["interactive"]["attainmentPercent"] == 50.0


def test_router_service_urls_resolve_to_every_ready_endpoint():
    url = "http://kubetier-router.kubetier-system.svc:8080/kubetier/status"
    assert router_service(url) == ("kubetier-router", "kubetier-system")
    assert router_service("http://kubetier-router.kubetier-system.svc.cluster.local:8080/x") == (
        "kubetier-router",
        "kubetier-system",
    )
    assert router_service("http://127.0.0.1:8080/kubetier/status") is None
    slices = [
        {
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                {"addresses": ["fd00::3"]},
            ],
        }
    ]
    assert replica_urls(url, slices) == [
        "http://10.0.0.1:8080/kubetier/status",
        "http://[fd00::3]:8080/kubetier/status",
    ]


async def test_feed_reads_every_replica_over_one_client(fake_kube):
    """Two router replicas on 127.0.0.1 and 127.0.0.2 (same port), found through the
    Service's EndpointSlice: the feed reads both and reports the summed attainment."""
    from kubetier.kube import KubeClient

    first = _serve(json.dumps(_replica(10, 10, 10)).encode())
    port = first.server_address[1]
    try:
        second = _serve(json.dumps(_replica(90, 45, 90)).encode(), host="127.0.0.2", port=port)
    except OSError:
        first.shutdown()
        import pytest

        pytest.skip("127.0.0.2 is not bindable here")
    fake_kube.put(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubetier-router-abc",
                "namespace": "kubetier-system",
                "labels": {"kubernetes.io/service-name": "kubetier-router"},
            },
            "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": ["127.0.0.1"]}, {"addresses": ["127.0.0.2"]}],
        }
    )
    api = KubeClient.for_url(fake_kube.url)
    feed = RouterStatusFeed(f"http://kubetier-router.kubetier-system.svc:{port}/kubetier/status", api, 0.05)
    seen: list[set[str]] = []
    task = asyncio.create_task(feed.run(seen.append))
    try:
        for _ in range(100):
            if feed.attainment("llama"):
                break
            await asyncio.sleep(0.05)
        assert feed.attainment("llama") == {"interactive": 55.0}
        assert len(feed.targets()) == 2 and {"llama"} in seen
    finally:
        task.cancel()
        await feed.aclose()
        await api.aclose()
        first.shutdown()
        second.shutdown()
