"""Spot evaluation: the same spot policy code (``kubetier.policy.spot``) on the fleet simulator.

A scenario's tiers keep an on-demand floor; the rest of each tier's servers run on spot
nodes whose availability follows a real availability trace (SpotServe's segments: nodes
added and preempted over time, stretched to the workload window) or a synthetic
preemption storm. Four policies are compared on one workload, side by side:

- ``on-demand``: every server on demand (the cost reference);
- ``naive-spot``: spot servers with no notice handling; a preempted server's in-flight
  streams break and clients retry from scratch (late, and counted as broken); no fallback;
- ``skyserve``: notices drain the server and start a replacement at once (spot in another
  zone first, on-demand fallback when spot does not come within the bound, back to spot when
  it is steady, one spot replica over-provisioned), but in-flight streams that do not finish
  before the node goes are retried from scratch (no migration);
- ``kubetier-drain``: the same fallback policy plus token-level migration: the noticed
  server takes no new request from the notice on, and streams that do not finish in the
  window continue on another server from the tokens already streamed;
- ``kubetier``: the same, with deadline-aware draining (``kubetier.policy.spot.admit_until``):
  the noticed server keeps taking the requests predicted to finish before the deadline, so
  a storm does not remove the capacity a whole notice window early.

Cost is GPU-hours by capacity type times a price table (:class:`Prices`, a parameter).
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kubetier.policy.routing import Decision
from kubetier.policy.spot import (
    SpotConfig,
    TierCapacity,
    admit_until,
    finishes_before_deadline,
    plan_capacity,
    tier_long_request_s,
)

from .engine import Hook, Server, Simulator

SPOT_POLICIES = ("on-demand", "naive-spot", "skyserve", "kubetier-drain", "kubetier")


@dataclass(frozen=True)
class Prices:
    """Price per GPU-hour by capacity type (USD). Defaults: AWS P5 (H100) on demand about
    $3.90/GPU-h after the 2025 price cuts, and spot at a 60% discount, the low end of the
    60-91% that GCP advertises for Spot VMs and within the 50-65% reported for H100 spot in
    early 2026; spot prices move daily, so this is a parameter (``--spot-discount``)."""

    on_demand_gpu_hour: float = 3.90
    spot_gpu_hour: float = 1.56


@dataclass(frozen=True)
class AvailabilityEvent:
    t_s: float
    kind: str  # "add" | "remove"
    nodes: tuple[str, ...]


def read_availability(path: Path) -> list[AvailabilityEvent]:
    """SpotServe availability segments: JSON lines ``[t_ms, "add"|"remove"|"DONE", {"nodes": [...]}]``."""
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[AvailabilityEvent] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                t_ms, kind, payload = json.loads(line)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not an availability event: {exc}") from None
            if kind == "DONE":
                break
            if kind not in ("add", "remove"):
                raise ValueError(f"{path}:{n}: unknown event kind {kind!r}")
            out.append(AvailabilityEvent(float(t_ms) / 1000.0, kind, tuple(payload.get("nodes", ()))))
    return out


def preemption_storm(
    nodes: int, duration_s: float, storms: int, lost_fraction: float, recover_s: float, seed: int
) -> list[AvailabilityEvent]:
    """Synthetic: ``storms`` times, a random ``lost_fraction`` of the spot nodes go at once
    (one zone emptied, as spot reclaims tend to be correlated) and return ``recover_s`` later."""
    rng = random.Random(seed)
    names = [f"node-{i}" for i in range(nodes)]
    events = [AvailabilityEvent(0.0, "add", tuple(names))]
    for k in range(storms):
        t = duration_s * (k + 1) / (storms + 1) + rng.uniform(-0.05, 0.05) * duration_s
        gone = tuple(sorted(rng.sample(names, max(1, round(lost_fraction * nodes)))))
        events.append(AvailabilityEvent(t, "remove", gone))
        events.append(AvailabilityEvent(t + recover_s, "add", tuple(f"{g}-r{k}" for g in gone)))
    return sorted(events, key=lambda e: e.t_s)


def replicate(events: list[AvailabilityEvent], copies: int) -> list[AvailabilityEvent]:
    """Each node of the trace stands for ``copies`` nodes: the same share of capacity comes
    and goes at each event, for a fleet larger than the traced cluster."""
    if copies <= 1:
        return list(events)
    return [AvailabilityEvent(e.t_s, e.kind, tuple(f"{n}#{k}" for n in e.nodes for k in range(copies))) for e in events]


def stretch(events: list[AvailabilityEvent], duration_s: float) -> list[AvailabilityEvent]:
    """Stretch an availability trace over ``duration_s`` (the trace's last event lands at 90%)."""
    last = max((e.t_s for e in events), default=0.0)
    if last <= 0:
        return list(events)
    k = 0.9 * duration_s / last
    return [AvailabilityEvent(e.t_s * k, e.kind, e.nodes) for e in events]


@dataclass
class _SpotServer:
    server: Server
    tier: str
    node: str  # spot node name; "" for on-demand
    kind: str  # "spot" | "on-demand" | "fallback"


@dataclass
class SpotOutcome:
    policy: str
    cost_usd: float
    gpu_hours_spot: float
    gpu_hours_on_demand: float
    preemptions: int
    broken_streams: int  # client-visible failures (stream cut, client retried)
    migrated_streams: int
    fallback_starts: int
    timeline: list[dict] = field(default_factory=list)  # capacity by type over time
    # Seconds each noticed server still took new requests after its notice (0: drained at once).
    admitted_after_notice_s: list[float] = field(default_factory=list)


class SpotFleet(Hook):
    """The spot control loop inside the simulator: follows node availability, handles
    notices per policy and runs ``plan_capacity`` for each tier every tick."""

    interval_s = 5.0

    def __init__(
        self,
        policy: str,
        spot_tiers: dict[str, int],
        availability: list[AvailabilityEvent],
        notice_s: float,
        cfg: SpotConfig,
        margin_s: float = 5.0,
        gpus_per_server: int = 1,
        admit_cap_s: float | None = None,
    ) -> None:
        if policy not in SPOT_POLICIES:
            raise ValueError(f"unknown spot policy {policy!r} (known: {', '.join(SPOT_POLICIES)})")
        self.policy = policy
        self.spot_tiers = dict(spot_tiers)
        self.availability = availability
        self.notice_s = notice_s
        self.cfg = cfg
        self.margin_s = margin_s
        self.admit_cap_s = admit_cap_s  # kubetier: most seconds a noticed server still admits
        self.gpus = gpus_per_server
        self.free_nodes: list[str] = []
        self.members: list[_SpotServer] = []
        self.noticed: set[int] = set()  # server idx under notice
        self.pending_since: dict[str, float | None] = {t: None for t in spot_tiers}
        self.steady_since: dict[str, float | None] = {t: 0.0 for t in spot_tiers}
        self.preemptions = 0
        self.migrated = 0
        self.fallback_starts = 0
        self.admitted_after_notice_s: list[float] = []
        self._admitting: dict[str, tuple[Server, float]] = {}  # sid -> (server, deadline) while admitting
        self._filtering = False
        self.timeline: list[dict] = []
        self.spot_idx: set[int] = set()  # every server ever started on spot
        self.sim: Simulator | None = None  # the run this hook is part of (set on its first call)

    # -- the scripted part: node availability and notices
    def schedule(self) -> Iterable[tuple[float, Callable[[Simulator, float], None]]]:
        for ev in self.availability:
            if ev.kind == "add":
                yield ev.t_s, self._adder(ev.nodes)
            else:
                yield max(0.0, ev.t_s - self.notice_s), self._noticer(ev.nodes, ev.t_s)
                yield ev.t_s, self._remover(ev.nodes)

    def _adder(self, nodes: tuple[str, ...]) -> Callable[[Simulator, float], None]:
        def add(sim: Simulator, now: float) -> None:
            self.sim = sim
            self.free_nodes.extend(nodes)
            if self.policy != "on-demand":
                self._fill(sim, now, warm=now == 0.0)

        return add

    def _noticer(self, nodes: tuple[str, ...], gone_at: float) -> Callable[[Simulator, float], None]:
        def notice(sim: Simulator, now: float) -> None:
            if self.policy in ("on-demand", "naive-spot"):
                return  # naive: nobody listens to the notice
            for m in self._on(nodes):
                self.noticed.add(m.server.idx)
                if self.policy == "kubetier":
                    until = self._admit_until(sim, m, now, gone_at)
                    self.admitted_after_notice_s.append(until - now)
                    if until > now:
                        self._admitting[m.server.sid] = (m.server, gone_at)
                        self._filter_requests(sim)
                    sim.call_at(until, self._drainer(m.server))
                else:
                    self.admitted_after_notice_s.append(0.0)
                    sim.drain_server(m.server)
            if self.policy in ("kubetier", "kubetier-drain"):
                # Streams still running near the deadline continue elsewhere at token level.
                leave_at = max(now, gone_at - self.margin_s)
                sim.call_at(leave_at, lambda s, t: self._migrate_off(s, t, nodes))
            self.on_tick(sim, now)

        return notice

    def _predicted_s(self, sim: Simulator, tier: str) -> float:
        k = sim.tier_names.index(tier)
        return tier_long_request_s(sim.ttft_s[k] * 1000.0, sim.tpot_s[k] * 1000.0, sim.exp_out[k])

    def _admit_until(self, sim: Simulator, m: _SpotServer, now: float, gone_at: float) -> float:
        # The server stays useful while its own tier's requests fit; requests of looser
        # tiers (which spill onto tighter servers) are checked one by one (_filter_requests).
        return admit_until(now, gone_at, self._predicted_s(sim, m.tier), self.margin_s, self.admit_cap_s)

    def _filter_requests(self, sim: Simulator) -> None:
        """Route each request as the router does under a notice: a server still admitting
        sits out the decision for a request of a tier that would not finish before its
        deadline (kubetier.policy.spot.finishes_before_deadline)."""
        if self._filtering:
            return
        self._filtering = True
        decide = sim._decide
        predicted = {name: self._predicted_s(sim, name) for name in sim.tier_names}

        def filtered(tier: str, prompt_tokens: int, waited_s: float) -> Decision:
            if not self._admitting:
                return decide(tier, prompt_tokens, waited_s)
            now = sim.now
            hidden = [
                srv
                for srv, deadline in self._admitting.values()
                if not srv.removed and not finishes_before_deadline(now, deadline, predicted[tier], self.margin_s)
            ]
            for srv in hidden:
                sim.policy.set_state(srv.sid, ready=False)
            try:
                return decide(tier, prompt_tokens, waited_s)
            finally:
                for srv in hidden:
                    sim.policy.set_state(srv.sid, ready=now >= srv.ready_at)

        sim._decide = filtered

    def _drainer(self, srv: Server) -> Callable[[Simulator, float], None]:
        def drain(sim: Simulator, now: float) -> None:
            self._admitting.pop(srv.sid, None)
            if not srv.removed:
                sim.drain_server(srv)

        return drain

    def _migrate_off(self, sim: Simulator, now: float, nodes: tuple[str, ...]) -> None:
        for m in self._on(nodes):
            if not m.server.removed:
                self.migrated += m.server.n_active
                sim.remove_server(m.server, migrate=True)

    def _remover(self, nodes: tuple[str, ...]) -> Callable[[Simulator, float], None]:
        def remove(sim: Simulator, now: float) -> None:
            self.free_nodes = [n for n in self.free_nodes if n not in nodes]
            for m in self._on(nodes):
                self.preemptions += 1
                if not m.server.removed:
                    sim.remove_server(m.server, migrate=False)  # the node is gone: streams break
                self.members.remove(m)
                for tier in self.spot_tiers:
                    self.steady_since[tier] = None
            if self.policy != "on-demand":
                self.on_tick(sim, now)

        return remove

    def _on(self, nodes: tuple[str, ...]) -> list[_SpotServer]:
        names = set(nodes)
        return [m for m in self.members if m.node in names]

    # -- the control loop
    def _fill(self, sim: Simulator, now: float, warm: bool) -> None:
        """Start spot servers on free nodes up to each tier's target."""
        for tier, wanted in self.spot_tiers.items():
            target = self._spot_target(tier, wanted)
            while self._count(tier, "spot") < target and self.free_nodes:
                node = self.free_nodes.pop(0)
                srv = sim.add_server(tier, ready_after_s=0.0 if warm else None)
                self.members.append(_SpotServer(srv, tier, node, "spot"))
                self.spot_idx.add(srv.idx)

    def _spot_target(self, tier: str, wanted: int) -> int:
        if self.policy == "naive-spot":
            return wanted
        return wanted + self.cfg.over_provision

    def _count(self, tier: str, kind: str, ready_only: bool = False, now: float = 0.0) -> int:
        n = 0
        for m in self.members:
            if m.tier != tier or m.kind != kind or m.server.removed or m.server.idx in self.noticed:
                continue
            if ready_only and m.server.ready_at > now:
                continue
            n += 1
        return n

    def on_tick(self, sim: Simulator, now: float) -> None:
        self.sim = sim
        if self.policy == "on-demand":
            return
        self._fill(sim, now, warm=False)
        for tier, wanted in self.spot_tiers.items():
            spot_ready = self._count(tier, "spot", ready_only=True, now=now)
            spot_all = self._count(tier, "spot")
            if spot_ready >= wanted:
                self.pending_since[tier] = None
                if self.steady_since[tier] is None:
                    self.steady_since[tier] = now
            else:
                self.steady_since[tier] = None
                if self.pending_since[tier] is None:
                    self.pending_since[tier] = now
            if self.policy == "naive-spot":
                continue
            fallback = [m for m in self.members if m.tier == tier and m.kind == "fallback" and not m.server.removed]
            view = TierCapacity(
                wanted=wanted,
                spot_ready=spot_ready,
                # Nothing obtainable counts as pending: plan_capacity falls back after the bound.
                spot_pending=max(1, spot_all - spot_ready) if spot_ready < wanted else spot_all - spot_ready,
                noticed=0,
                pending_since=self.pending_since[tier],
                spot_steady_since=self.steady_since[tier],
                fallback=len(fallback),
            )
            plan = plan_capacity(view, now, self.cfg)
            for _ in range(plan.fallback_replicas - len(fallback)):
                srv = sim.add_server(tier)
                self.members.append(_SpotServer(srv, tier, "", "fallback"))
                self.fallback_starts += 1
            for m in fallback[: max(0, len(fallback) - plan.fallback_replicas)]:
                # Back to spot: drain, then give the on-demand server back once idle.
                sim.drain_server(m.server)
                self.members.remove(m)
                sim.call_at(now + 60.0, self._retirer(m.server))
        self.timeline.append(
            {
                "t": round(now, 1),
                "spot": sum(1 for m in self.members if m.kind == "spot" and not m.server.removed),
                "fallback": sum(1 for m in self.members if m.kind == "fallback" and not m.server.removed),
            }
        )

    def _retirer(self, srv: Server) -> Callable[[Simulator, float], None]:
        def retire(sim: Simulator, now: float) -> None:
            if not srv.removed:
                sim.remove_server(srv, migrate=True)

        return retire

    def cost(self, sim: Simulator, prices: Prices, horizon_s: float) -> tuple[float, float, float]:
        """(USD, spot GPU-hours, on-demand GPU-hours) over ``[0, horizon_s]``: every policy is
        charged for the same window whatever its drain tail."""
        spot_s = od_s = 0.0
        for start, end, srv in sim.server_lifetimes():
            life = max(0.0, min(end, horizon_s) - min(start, horizon_s))
            if srv.idx in self.spot_idx:
                spot_s += life
            else:
                od_s += life
        spot_h, od_h = spot_s * self.gpus / 3600.0, od_s * self.gpus / 3600.0
        return spot_h * prices.spot_gpu_hour + od_h * prices.on_demand_gpu_hour, spot_h, od_h


def spot_split(servers: dict[str, int], floors: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(on-demand servers per tier, spot servers per tier) from a tier's total and its floor."""
    on_demand = {t: min(n, floors.get(t, 0)) for t, n in servers.items()}
    spot = {t: n - on_demand[t] for t, n in servers.items() if n - on_demand[t] > 0}
    return on_demand, spot


def outcome_row(policy: str, fleet: SpotFleet, sim: Simulator, prices: Prices, horizon_s: float) -> SpotOutcome:
    usd, spot_h, od_h = fleet.cost(sim, prices, horizon_s)
    return SpotOutcome(
        policy=policy,
        cost_usd=usd,
        gpu_hours_spot=spot_h,
        gpu_hours_on_demand=od_h,
        preemptions=fleet.preemptions,
        broken_streams=sim.n_broken,
        migrated_streams=fleet.migrated,
        fallback_starts=fleet.fallback_starts,
        timeline=fleet.timeline,
        admitted_after_notice_s=list(fleet.admitted_after_notice_s),
    )


def to_json(rows: list[SpotOutcome]) -> list[dict]:
    return [asdict(r) for r in rows]
