"""Attainment flows from the router's status endpoint into ModelService status."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubetier.operator.modelservice.router_feed import attainment_from_status, fetch_attainment

STATUS = {
    "models": {
        "llama": {
            "tiers": {
                "interactive": {"requests": 40, "completed": 40, "failed": 0, "attainmentPercent": 97.5},
                "batch": {"requests": 3, "completed": 3, "failed": 0, "attainmentPercent": 100.0},
                "standard": {"requests": 9, "completed": 8, "failed": 1, "attainmentPercent": 88.9},
            }
        }
    }
}


def test_tiers_with_enough_finished_requests_are_reported():
    assert attainment_from_status(STATUS, "llama") == {"interactive": 97.5, "standard": 88.9}


def test_other_models_and_empty_documents_report_nothing():
    assert attainment_from_status(STATUS, "other") == {}
    assert attainment_from_status({}, "llama") == {}


def _serve(body: bytes, status: int = 200):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
