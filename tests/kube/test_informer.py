"""The informer against the HTTP-level fake API: lists once, follows changes through a
watch from the list's resourceVersion, re-lists after 410 Gone and reports what changed
in between, and answers index lookups without a request."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from fake_kube import FakeKube

from kubetier.kube import KubeClient
from kubetier.kube.informer import Informer


def pod(name: str, service: str, ns: str = "default", managed: bool = True) -> dict:
    labels = {"kubetier.io/service": service}
    if managed:
        labels["app.kubernetes.io/managed-by"] = "kubetier"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels}}


async def until(predicate, timeout=5.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fake():
    with FakeKube() as f:
        yield f


@pytest.mark.timeout(30)
async def test_list_then_watch_with_selector_and_index(fake):
    fake.put(pod("a", "chat"))
    fake.put(pod("stranger", "chat", managed=False))
    api = KubeClient.for_url(fake.url)
    informer = Informer(api, "Pod", None, "app.kubernetes.io/managed-by=kubetier", index_label="kubetier.io/service")
    seen: list[tuple[str, str]] = []
    informer.on_change(lambda t, old, new: seen.append((t, (new or old)["metadata"]["name"])))
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 5)
        assert [o["metadata"]["name"] for o in informer.items()] == ["a"], "the selector filters the list"
        assert seen == [("ADDED", "a")]

        fake.put(pod("b", "chat"))
        fake.put(pod("c", "other", ns="team-a"))
        fake.put(pod("stranger-2", "chat", managed=False))
        await until(lambda: len(informer) == 3, what="watch events")
        assert [o["metadata"]["name"] for o in informer.indexed("default", "chat")] == ["a", "b"]
        assert [o["metadata"]["name"] for o in informer.indexed("team-a", "other")] == ["c"]
        assert informer.get("team-a", "c") is not None

        fake.remove("Pod", "default", "a")
        await until(lambda: informer.get("default", "a") is None, what="delete event")
        assert [o["metadata"]["name"] for o in informer.indexed("default", "chat")] == ["b"]

        # Writes: none (an informer only reads).
        assert api.counts.writes() == 0
    finally:
        task.cancel()
        await api.aclose()


@pytest.mark.timeout(30)
async def test_watch_expired_during_stream_relists(fake):
    """A watch that starts from a compacted version is answered with an ERROR 410
    event: the informer lists again instead of serving a stale cache."""
    fake.put(pod("a", "chat"))
    api = KubeClient.for_url(fake.url)
    informer = Informer(api, "Pod", "default", "app.kubernetes.io/managed-by=kubetier", watch_timeout_s=1)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 5)
        fake.compact()
        fake.put(pod("b", "chat"))  # sent live on the current watch
        await until(lambda: informer.get("default", "b") is not None, what="live event")
        # The server ends the watch after 1 s; resuming from a version older than the
        # compaction gets 410 and the informer lists again.
        fake.compact()
        await until(lambda: informer.relists >= 1, timeout=10, what="a re-list")
        assert {o["metadata"]["name"] for o in informer.items()} == {"a", "b"}
    finally:
        task.cancel()
        await api.aclose()


async def test_relist_reports_what_changed_while_not_watching(fake):
    fake.put(pod("a", "chat"))
    fake.put(pod("b", "chat"))
    api = KubeClient.for_url(fake.url)
    informer = Informer(api, "Pod", "default", "app.kubernetes.io/managed-by=kubetier")
    seen: list[tuple[str, str]] = []
    try:
        await informer._list(notify=False)
        informer.on_change(lambda t, old, new: seen.append((t, (new or old)["metadata"]["name"])))
        fake.remove("Pod", "default", "a")
        changed = pod("b", "chat")
        changed["metadata"]["labels"]["x"] = "y"
        fake.put(changed)
        fake.put(pod("c", "chat"))
        await informer._list(notify=True)
        assert sorted(seen) == [("ADDED", "c"), ("DELETED", "a"), ("MODIFIED", "b")]
    finally:
        await api.aclose()


def test_remember_never_replaces_a_newer_version():
    informer = Informer(KubeClient.for_url("http://127.0.0.1:1"), "Pod")
    newer = pod("a", "chat")
    newer["metadata"]["resourceVersion"] = "20"
    older = pod("a", "chat")
    older["metadata"]["resourceVersion"] = "10"
    informer.remember(newer)
    informer.remember(older)
    assert informer.get("default", "a")["metadata"]["resourceVersion"] == "20"
    # A stale watch event (our own write was remembered first) is ignored too.
    informer._apply_event("MODIFIED", older)
    assert informer.get("default", "a")["metadata"]["resourceVersion"] == "20"
    informer._apply_event("DELETED", older)
    assert informer.get("default", "a") is None


def test_node_heartbeats_are_not_changes_but_capacity_is():
    from kubetier.operator.modelservice.watches import node_changed

    node = {"metadata": {"name": "n", "labels": {"a": "b"}}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}}
    beat = {**node, "status": {**node["status"], "conditions": [{"type": "Ready", "lastHeartbeatTime": "t"}]}}
    assert not node_changed(node, beat)
    assert node_changed(node, {**node, "spec": {"unschedulable": True}})
    assert node_changed(node, {**node, "status": {"allocatable": {"nvidia.com/gpu": "4"}}})
    assert node_changed(None, node) and node_changed(node, None)
