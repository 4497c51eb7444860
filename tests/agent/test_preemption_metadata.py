"""The agent's metadata poller against a local mock of the AWS, GCP and Azure endpoints."""

import asyncio
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from kubetier.agent.preemption import MetadataPoller, watch_for_notice
from kubetier.policy.spot import DEADLINE_ANNOTATION, SOURCE_ANNOTATION, rfc3339

NOW = 1_800_000_000.0


class MetadataMock:
    """Serves what the three clouds' metadata endpoints answer; ``notice`` switches a notice on."""

    def __init__(self) -> None:
        self.notice = False
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        mock = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                mock.requests.append(("PUT", self.path, dict(self.headers)))
                self._send(200, "token-1")

            def do_GET(self):
                mock.requests.append(("GET", self.path, dict(self.headers)))
                if self.path == "/latest/meta-data/spot/instance-action":
                    if self.headers.get("X-aws-ec2-metadata-token") != "token-1":
                        return self._send(401, "")
                    if not mock.notice:
                        return self._send(404, "")
                    when = datetime.fromtimestamp(NOW + 120, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    return self._send(200, json.dumps({"action": "terminate", "time": when}))
                if self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self._send(403, "")
                    return self._send(200, "TRUE" if mock.notice else "FALSE")
                if self.path.startswith("/metadata/scheduledevents"):
                    if self.headers.get("Metadata") != "true":
                        return self._send(400, "")
                    events = (
                        [{"EventId": "e1", "EventType": "Preempt", "Resources": ["vm-1"], "NotBefore": ""}]
                        if mock.notice
                        else []
                    )
                    return self._send(200, json.dumps({"DocumentIncarnation": 1, "Events": events}))
                return self._send(404, "")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mock():
    m = MetadataMock()
    yield m
    m.close()


@pytest.mark.parametrize(("source", "window"), [("aws", 120.0), ("gcp", 30.0), ("azure", 30.0)])
async def test_each_cloud_no_notice_then_notice(mock, source, window):
    async with httpx.AsyncClient(timeout=5) as http:
        poller = MetadataPoller(source, http, base_url=mock.url, vm_name="vm-1")
        assert await poller.deadline(NOW) is None
        mock.notice = True
        assert await poller.deadline(NOW) == pytest.approx(NOW + window)


class FakeNodes:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict]] = []

    async def patch(self, kind, namespace, name, patch):
        assert kind == "Node" and namespace is None
        self.patches.append((name, patch))
        return {}


async def test_watch_annotates_the_node_once_the_notice_appears(mock):
    nodes = FakeNodes()
    async with httpx.AsyncClient(timeout=5) as http:
        poller = MetadataPoller("gcp", http, base_url=mock.url)
        task = asyncio.create_task(watch_for_notice(poller, "gpu-1", nodes, interval_s=0.05, clock=lambda: NOW))
        await asyncio.sleep(0.2)
        assert not task.done() and nodes.patches == []
        mock.notice = True
        deadline = await asyncio.wait_for(task, timeout=5)
    assert deadline == NOW + 30
    [(name, patch)] = nodes.patches
    assert name == "gpu-1"
    assert patch["metadata"]["annotations"] == {DEADLINE_ANNOTATION: rfc3339(NOW + 30), SOURCE_ANNOTATION: "gcp"}


async def test_unreachable_endpoint_is_retried_and_stop_ends_the_watch():
    nodes = FakeNodes()
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=0.2) as http:
        poller = MetadataPoller("aws", http, base_url="http://127.0.0.1:9")  # nothing listens on the discard port
        task = asyncio.create_task(watch_for_notice(poller, "gpu-1", nodes, interval_s=0.05, stop=stop))
        await asyncio.sleep(0.3)
        stop.set()
        assert await asyncio.wait_for(task, timeout=5) is None
    assert nodes.patches == []


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="unknown metadata source"):
        MetadataPoller("ibm", httpx.AsyncClient())
