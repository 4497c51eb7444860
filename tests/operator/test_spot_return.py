"""Return to spot: one on-demand replica of a spot-eligible tier moves back once spot is
steady and has room (operator/spot/rebalance.py against an in-memory API)."""

import datetime as dt

from modelservice_builders import sample_body

from kubetier.operator.modelservice.model import OperatorConfig
from kubetier.operator.spot.rebalance import return_to_spot
from kubetier.policy.spot import SpotConfig

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def node(name, kind, gpus=8, age_s=3600.0, taints=()):
    created = (NOW - dt.timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"name": name, "labels": {"karpenter.sh/capacity-type": kind}, "creationTimestamp": created},
        "spec": {"taints": list(taints)},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod(name, tier, node_name, gpus=1, pool="main", ready=True):
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {
                "kubetier.io/service": "llama-8b",
                "kubetier.io/tier": tier,
                "kubetier.io/role": "serving",
                "kubetier.io/pool": pool,
            },
        },
        "spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


class FakeApi:
    def __init__(self, nodes, pods):
        self.nodes, self.pods = nodes, pods
        self.deleted: list[str] = []
        self.events: list[dict] = []

    async def list(self, kind, namespace=None, label_selector=None, field_selector=None):
        if kind == "Node":
            return self.nodes
        out = self.pods
        if field_selector:
            want = field_selector.split("=", 1)[1]
            out = [p for p in out if p["spec"]["nodeName"] == want]
        if label_selector:
            terms = dict(t.split("=", 1) for t in label_selector.split(","))
            out = [p for p in out if all(p["metadata"]["labels"].get(k) == v for k, v in terms.items())]
        return out

    async def delete(self, kind, namespace, name, grace_period_s=None):
        self.deleted.append(name)

    async def create(self, kind, namespace, obj):
        self.events.append(obj)
        return obj


async def test_one_batch_replica_moves_back_when_spot_has_room():
    body = sample_body()  # batch: spot preferred; standard: spot allowed with an on-demand floor
    api = FakeApi(
        [node("od-1", "on-demand"), node("spot-1", "spot", gpus=2)],
        [
            pod("batch-a", "batch", "od-1"),
            pod("batch-b", "batch", "od-1"),
            pod("std-floor", "standard", "od-1", pool="floor"),
            pod("std-1", "standard", "spot-1"),
        ],
    )
    moved = await return_to_spot(api, body, OperatorConfig(), NOW, SpotConfig(return_after_s=300))
    assert moved == ["batch-a"] and api.deleted == ["batch-a"]  # the floor pod never moves
    assert api.events[0]["reason"] == "ReturnToSpot" and "batch" in api.events[0]["message"]


async def test_nothing_moves_without_steady_room_on_spot():
    body = sample_body()
    pods = [pod("batch-a", "batch", "od-1"), pod("batch-b", "batch", "od-1")]
    young = FakeApi([node("od-1", "on-demand"), node("spot-1", "spot", age_s=60)], pods)
    assert await return_to_spot(young, body, OperatorConfig(), NOW, SpotConfig(return_after_s=300)) == []
    full = FakeApi([node("od-1", "on-demand"), node("spot-1", "spot", gpus=1)], [*pods, pod("x", "standard", "spot-1")])
    assert await return_to_spot(full, body, OperatorConfig(), NOW, SpotConfig(return_after_s=300)) == []
    noticed = FakeApi(
        [node("od-1", "on-demand"), node("spot-1", "spot", taints=[{"key": "karpenter.sh/disrupted"}])], pods
    )
    assert await return_to_spot(noticed, body, OperatorConfig(), NOW, SpotConfig(return_after_s=300)) == []
