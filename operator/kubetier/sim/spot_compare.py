"""`kubetier simulate spot`: cost and attainment of the four spot policies side by side."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from kubetier.policy.latency import load_profile
from kubetier.policy.spot import SpotConfig

from .runner import RunResult, arrivals, run_once
from .scenario import Scenario, ScenarioError, load_scenario
from .spot import (
    SPOT_POLICIES,
    AvailabilityEvent,
    Prices,
    SpotFleet,
    SpotOutcome,
    outcome_row,
    preemption_storm,
    read_availability,
    replicate,
    spot_split,
    stretch,
)
from .workload import default_traces_dir


@dataclass
class SpotRow:
    outcome: SpotOutcome
    run: RunResult

    def to_json(self) -> dict:
        return {
            "policy": self.outcome.policy,
            "costUsd": round(self.outcome.cost_usd, 2),
            "gpuHoursSpot": round(self.outcome.gpu_hours_spot, 3),
            "gpuHoursOnDemand": round(self.outcome.gpu_hours_on_demand, 3),
            "preemptions": self.outcome.preemptions,
            "brokenStreams": self.outcome.broken_streams,
            "migratedStreams": self.outcome.migrated_streams,
            "fallbackStarts": self.outcome.fallback_starts,
            "admittedAfterNoticeS": [round(x, 1) for x in self.outcome.admitted_after_notice_s],
            "attainmentPercent": {t.name: round(t.attainment_deadline, 2) for t in self.run.tiers},
            "requests": self.run.requests,
            "timeline": self.outcome.timeline,
        }


def _with_fleet(sc: Scenario, servers: dict[str, int], duration_s: float | None) -> Scenario:
    fleet = sc.fleet.model_copy(update={"servers": servers, "pool": None})
    update: dict[str, object] = {"fleet": fleet}
    if duration_s is not None:
        update["workload"] = sc.workload.model_copy(update={"duration_s": duration_s})
    return sc.model_copy(update=update)


def compare_spot(
    sc: Scenario,
    availability: list[AvailabilityEvent],
    floors: dict[str, int],
    rate_scale: float,
    notice_s: float,
    prices: Prices,
    cfg: SpotConfig,
    traces_dir: Path | None,
    policies: tuple[str, ...] = SPOT_POLICIES,
    duration_s: float | None = None,
    admit_cap_s: float | None = None,
) -> list[SpotRow]:
    if sc.fleet.servers is None:
        raise ValueError("the spot comparison needs a scenario with fleet.servers (per tier), not a pool")
    model = load_profile(sc.profile)
    full = _with_fleet(sc, dict(sc.fleet.servers), duration_s)
    # Every policy is charged over the same window: the arrivals' span at this rate scale.
    horizon = max((a.t for a in arrivals(full, rate_scale, traces_dir)), default=0.0)
    on_demand, spot = spot_split(dict(sc.fleet.servers), floors)
    # Scale the traced cluster to this fleet: the first event's nodes cover what spot must hold.
    first = len(availability[0].nodes) if availability else 1
    copies = math.ceil((sum(spot.values()) + cfg.over_provision * len(spot)) / max(1, first))
    events = stretch(replicate(availability, copies), horizon)
    rows = []
    for policy in policies:
        if policy == "on-demand":
            hook = SpotFleet(policy, {}, [], notice_s, cfg, gpus_per_server=model.gpu_count)
            run = run_once(full, "kubetier", rate_scale, model, traces_dir, hooks=[hook])
        else:
            hook = SpotFleet(
                policy, spot, events, notice_s, cfg, gpus_per_server=model.gpu_count, admit_cap_s=admit_cap_s
            )
            floor_sc = _with_fleet(sc, {t: max(0, n) for t, n in on_demand.items()}, duration_s)
            run = run_once(floor_sc, "kubetier", rate_scale, model, traces_dir, hooks=[hook])
        assert hook.sim is not None, "the spot hook never ran"
        rows.append(SpotRow(outcome_row(policy, hook, hook.sim, prices, horizon), run))
    return rows


def _print(rows: list[SpotRow], tight: str) -> None:
    ref = next((r for r in rows if r.outcome.policy == "on-demand"), None)
    tiers = [t.name for t in rows[0].run.tiers]
    head = (
        f"{'policy':<14} {'cost $':>9} {'vs OD':>7} {'spot h':>7} {'OD h':>6} {'preempt':>7} {'broken':>6} {'migr':>5}"
    )
    print(head + "".join(f" {t[:11]:>11}" for t in tiers))
    for r in rows:
        o = r.outcome
        saving = (
            "" if ref is None or ref.outcome.cost_usd <= 0 else f"{100 * (1 - o.cost_usd / ref.outcome.cost_usd):+.0f}%"
        )
        att = "".join(f" {t.attainment_deadline:>10.1f}%" for t in r.run.tiers)
        print(
            f"{o.policy:<14} {o.cost_usd:>9.2f} {saving:>7} {o.gpu_hours_spot:>7.2f} {o.gpu_hours_on_demand:>6.2f}"
            f" {o.preemptions:>7} {o.broken_streams:>6} {o.migrated_streams:>5}{att}"
        )
    print(f"(cost saving is against all on-demand; the tight tier is {tight!r}; attainment = per-token deadlines met)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubetier simulate spot",
        description="Compare spot policies (on-demand, naive-spot, skyserve, kubetier-drain, kubetier) on one workload: "
        "cost by capacity type, per-tier attainment, preemptions, broken and migrated streams.",
    )
    p.add_argument("--scenario", default="azure-by-source", help="shipped scenario name or YAML path (fleet.servers)")
    p.add_argument(
        "--availability",
        default="availability_0203",
        help="SpotServe availability trace name (availability_0203|0304|0506) or path, or 'storm'",
    )
    p.add_argument("--storms", type=int, default=3, help="with --availability storm: how many preemption waves")
    p.add_argument("--storm-fraction", type=float, default=0.5, help="share of spot nodes lost in one wave")
    p.add_argument("--storm-recover-s", type=float, default=300.0, help="seconds until lost nodes come back")
    p.add_argument("--floor", action="append", default=[], metavar="TIER=N", help="on-demand floor of a tier")
    p.add_argument("--rate-scale", type=float, default=2.0, help="workload rate scale (default 2)")
    p.add_argument("--duration-s", type=float, default=None, help="override the workload window")
    p.add_argument("--notice-s", type=float, default=30.0, help="preemption notice window (AWS 120, GCP/Azure 30)")
    p.add_argument("--on-demand-price", type=float, default=Prices.on_demand_gpu_hour, help="USD per GPU-hour")
    p.add_argument("--spot-discount", type=float, default=0.60, help="spot price = on-demand x (1 - discount)")
    p.add_argument("--fallback-after-s", type=float, default=SpotConfig.fallback_after_s)
    p.add_argument("--return-after-s", type=float, default=SpotConfig.return_after_s)
    p.add_argument(
        "--over-provision",
        type=int,
        default=1,
        help="extra spot replicas per tier (skyserve, kubetier-drain, kubetier)",
    )
    p.add_argument(
        "--admit-cap-s",
        type=float,
        default=None,
        help="kubetier: most seconds a noticed server still takes new requests (on Kubernetes: the pod's "
        "preStop sleep, 15 by default); default: as long as they are predicted to finish before the deadline",
    )
    p.add_argument(
        "--policies",
        default=",".join(SPOT_POLICIES),
        help=f"comma-separated subset of {','.join(SPOT_POLICIES)}",
    )
    p.add_argument("--traces-dir", type=Path, default=None, help="folder holding the public traces")
    p.add_argument("--output", type=Path, default=None, help="write the table as JSON here")
    return p


def _availability(
    args: argparse.Namespace, spot_nodes: int, traces_dir: Path | None, seed: int
) -> list[AvailabilityEvent]:
    if args.availability == "storm":
        return preemption_storm(
            max(1, spot_nodes + 2), 3600.0, args.storms, args.storm_fraction, args.storm_recover_s, seed
        )
    path = Path(args.availability)
    if not path.is_file():
        base = traces_dir or default_traces_dir()
        candidates = [
            base / "spotserve" / f"{args.availability}.jsonl",
            base / "spotserve" / f"{args.availability}.jsonl.gz",
        ]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"availability trace {args.availability!r} not found under {base / 'spotserve'}")
        path = found
    return read_availability(path)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        sc = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"kubetier simulate spot: {exc}", file=sys.stderr)
        return 2
    if sc.fleet.servers is None:
        print("kubetier simulate spot: --scenario needs fleet.servers per tier", file=sys.stderr)
        return 2
    floors: dict[str, int] = {}
    for item in args.floor:
        name, _, n = item.partition("=")
        if name not in sc.fleet.servers or not n.isdigit():
            print(f"kubetier simulate spot: --floor {item!r}: want TIER=N with a tier of the scenario", file=sys.stderr)
            return 2
        floors[name] = int(n)
    if not floors:
        tight = min(sc.tiers, key=lambda t: t.tpot_ms).name
        floors = {tight: 1}
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    unknown = [p for p in policies if p not in SPOT_POLICIES]
    if unknown or not policies:
        print(
            f"kubetier simulate spot: --policies: unknown {unknown} (known: {', '.join(SPOT_POLICIES)})",
            file=sys.stderr,
        )
        return 2
    prices = Prices(args.on_demand_price, args.on_demand_price * (1.0 - args.spot_discount))
    cfg = SpotConfig(
        fallback_after_s=args.fallback_after_s, return_after_s=args.return_after_s, over_provision=args.over_provision
    )
    spot_nodes = sum(sc.fleet.servers.values()) - sum(floors.values())
    try:
        availability = _availability(args, spot_nodes, args.traces_dir, sc.seed)
    except (OSError, ValueError) as exc:
        print(f"kubetier simulate spot: {exc}", file=sys.stderr)
        return 2
    rows = compare_spot(
        sc,
        availability,
        floors,
        args.rate_scale,
        args.notice_s,
        prices,
        cfg,
        args.traces_dir,
        duration_s=args.duration_s,
        admit_cap_s=args.admit_cap_s,
        policies=policies,
    )
    _print(rows, min(sc.tiers, key=lambda t: t.tpot_ms).name)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "scenario": sc.name,
            "availability": args.availability,
            "noticeS": args.notice_s,
            "admitCapS": args.admit_cap_s,
            "rateScale": args.rate_scale,
            "floors": floors,
            "prices": {"onDemandGpuHour": prices.on_demand_gpu_hour, "spotGpuHour": prices.spot_gpu_hour},
            "rows": [r.to_json() for r in rows],
        }
        args.output.write_text(json.dumps(doc, indent=2))
    return 0
