"""A shared pool in the router's fleet, without engines: discovery reads the pool from the
routing document and pool pods; servers join bins, keep them across rediscovery, and a
bin that loses a server below its minimum gets an idle one back."""

from __future__ import annotations

import json

from test_router_parts import _pod, _routing_cm

from kubetier.api.labels import POOL_LABEL, SHARED_POOL, TIER_LABEL
from kubetier.policy.bins import BinLimits
from kubetier.router.discovery import build_config
from kubetier.router.fleet import ModelFleet
from kubetier.router.metrics import RouterMetrics


def pool_cm(bins: list[dict]) -> dict:
    cm = _routing_cm()
    doc = json.loads(cm["data"]["routing.json"])
    doc["sharedPool"] = {"bins": bins}
    cm["data"]["routing.json"] = json.dumps(doc)
    return cm


def pool_pod(name: str, ip: str) -> dict:
    p = _pod(name, "ignored", ip=ip)
    labels = p["metadata"]["labels"]
    del labels[TIER_LABEL]
    labels[POOL_LABEL] = SHARED_POOL
    return p


BINS = [{"tier": "interactive", "minServers": 1, "maxServers": 3}, {"tier": "batch", "minServers": 1}]


def test_discovery_reads_the_pool_and_its_pods():
    config = build_config([pool_cm(BINS)], [pool_pod("p1", "10.0.0.1"), _pod("t1", "batch", ip="10.0.0.9")], {})
    spec = config.models["llama"]
    assert spec.bin_limits == {"interactive": BinLimits(1, 3), "batch": BinLimits(1, None)}
    servers = {s.server_id: s for s in spec.servers}
    assert servers["team-a/p1"].pooled and servers["team-a/p1"].tier == ""
    assert not servers["team-a/t1"].pooled and servers["team-a/t1"].tier == "batch"
    # without sharedPool in the routing document, pool pods are not this service's servers
    plain = build_config([_routing_cm()], [pool_pod("p1", "10.0.0.1")], {})
    assert plain.models["llama"].servers == [] and plain.models["llama"].bin_limits is None


def fleet_of(ips: list[str]) -> tuple[ModelFleet, list[dict]]:
    pods = [pool_pod(f"p{i}", ip) for i, ip in enumerate(ips)]
    spec = build_config([pool_cm(BINS)], pods, {}).models["llama"]
    return ModelFleet(spec, RouterMetrics("test")), pods


def bins(fleet: ModelFleet) -> dict[str, str]:
    st = fleet.model_status()
    assert st.shared_pool and all(s.pooled for s in st.servers)
    return {s.id: s.tier for s in st.servers}


def test_servers_join_bins_keep_them_and_minimums_are_restored():
    fleet, pods = fleet_of(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    assert fleet.policy.rebin_idle and fleet.policy.bin_limits["interactive"] == BinLimits(1, 3)
    # minimums first (interactive, then batch), then the emptiest bin (tie: spec order)
    assert bins(fleet) == {"team-a/p0": "interactive", "team-a/p1": "batch", "team-a/p2": "interactive"}
    # rediscovery keeps each server's bin, including one the policy moved
    ld = fleet.policy.server("team-a/p2")
    assert ld is not None
    fleet.policy.remove_server("team-a/p2")
    ld.tier = "batch"
    fleet.policy.upsert_server(ld)
    fleet._moved("team-a/p2")
    assert fleet.model_status().bin_moves == 1
    fleet.set_servers(build_config([pool_cm(BINS)], pods, {}).models["llama"].servers)
    assert bins(fleet) == {"team-a/p0": "interactive", "team-a/p1": "batch", "team-a/p2": "batch"}
    # the only interactive server leaves: an idle batch server (batch keeps its minimum) moves
    fleet.set_servers(build_config([pool_cm(BINS)], pods[1:], {}).models["llama"].servers)
    assert sorted(bins(fleet).values()) == ["batch", "interactive"]
    assert fleet.model_status().bin_moves == 2


def test_a_bin_whose_server_turns_unready_gets_an_idle_one():
    fleet, _pods = fleet_of(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    assert bins(fleet)["team-a/p1"] == "batch"
    fleet.mark_unhealthy("team-a/p1")
    fleet.restore_bin_minimums()  # what every scrape round does
    after = bins(fleet)
    assert after["team-a/p1"] == "batch"  # it stays in its bin, unready
    assert sorted(after[s] for s in ("team-a/p0", "team-a/p2")) == ["batch", "interactive"]
    assert fleet.model_status().bin_moves == 1


def test_a_moved_server_s_metrics_follow_its_bin():
    fleet, _pods = fleet_of(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    fleet.mark_unhealthy("team-a/p1")
    fleet.restore_bin_minimums()
    moved = next(s.id for s in fleet.model_status().servers if s.id != "team-a/p1" and s.tier == "batch")
    series = {
        tuple(sample.labels.get(k) for k in ("server", "tier"))
        for metric in fleet.metrics.server_ready.collect()
        for sample in metric.samples
    }
    assert (moved, "batch") in series and (moved, "interactive") not in series, series
