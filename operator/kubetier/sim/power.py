"""Power-capped oversubscription in the fleet simulator (POLCA), with the live controller's policy code.

One power domain with a budget of ``budget_servers`` x TDP. Four arms, side by side on
the same scenario (traces, tiers, routing policy):

* ``nominal``: ``budget_servers`` servers (budget / TDP: no oversubscription) at the
  scenario's load; power is watched, never capped.
* ``oversubscribed-uncapped``: ``ratio`` times the servers and the load, no capping:
  shows what the capping has to prevent.
* ``uniform``: the same oversubscribed fleet, every server capped alike (one cap group).
* ``polca``: the same fleet under :func:`kubetier.policy.power.decide`: lowest priority
  (then loosest TPOT) tiers capped first, the tightest tier only by the brake.

The oversubscribed arms carry ``ratio`` times the load (the trace replayed
``ratio`` times faster), so every server carries the same load as in ``nominal``: the
question is whether the domain can host the extra servers without hurting the tight tier.

Control loop, as deployed (every delay a parameter): the agent samples each server's
instantaneous power every ``sample_s`` and reports the mean every ``report_s``; the
report reaches the controller ``telemetry_delay_s`` later; the controller decides every
``control_s``; a cap lands on the server ``actuation_s`` after the decision (the agent
polls its Node for the cap, then locks clocks). A capped server runs its profile's
capped latency model (:func:`kubetier.policy.power_cap.capped_model`) and the router
sees it as such, so tight-tier requests avoid capped servers by the ordinary
feasibility check.

Domain power for the "time above" figures is the true sum of the servers' draw, sampled
every ``sample_s`` (not the delayed telemetry).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from kubetier.policy.latency import LatencyModel, load_profile
from kubetier.policy.power import (
    PowerPolicyConfig,
    PowerState,
    PowerWindow,
    ServerReading,
    ThresholdClock,
    decide,
    nominal_servers,
    servers_allowed,
)
from kubetier.policy.power_cap import capped_model
from kubetier.policy.routing import TierSLO

from .engine import Hook, OutcomeSink, Server, SimConfig, Simulator
from .metrics import Collector, summarize
from .runner import POLICY_KINDS, arrivals
from .scenario import Scenario, load_scenario

ARMS = ("nominal", "oversubscribed-uncapped", "uniform", "polca")


@dataclass(frozen=True)
class PowerSimSpec:
    """Defaults: the shipped comparison. ``budget_servers`` 9 with ``ratio`` 1.34 gives 12
    servers, the scenario's own 4 + 4 + 4 fleet, so every tier gets exactly 4/3 of its
    nominal servers for 4/3 of the load. Rate scale 3 is the highest of 3 / 3.5 / 4 at
    which the nominal fleet met every tier's target (before the routing policy's v2 knobs;
    after them the standard tier sits at 89.9 %). Thresholds 90/80/97 % with a 2 s trend
    lookahead: the PowerBudget defaults. Without the trend a trace burst took the domain
    from below 90 % to 106 % within one loop; 85/75/92 % without a trend, or the trend at
    90/80/97 %, absorbs it (docs/power.md, the sweep). Caps at 60 %, brake at 45 % of a
    server's maximum (the defaults).
    The loop (report 0.5 s, delay 0.2 s, control 0.5 s, actuation 0.2 s) is no faster than
    the one measured on the local cluster (e2e/test_power.py: controller tick 0.5 s, agent
    reports every 0.5 s, caps applied through a Node watch in tens of milliseconds)."""

    scenario: str = "azure-by-source"
    rate_scale: float = 3.0
    budget_servers: int = 9
    ratio: float = 1.34
    cap_threshold: float = 0.90
    uncap_threshold: float = 0.80
    hard_threshold: float = 0.97
    cap_fraction: float = 0.60
    brake_fraction: float = 0.45
    sample_s: float = 0.1
    report_s: float = 0.5
    telemetry_delay_s: float = 0.2
    control_s: float = 0.5
    actuation_s: float = 0.2
    lift_after_s: float = 30.0
    duration_s: float | None = None
    bucket_s: float = 30.0
    p99_window_s: float = 300.0
    trend_lookahead_s: float = 2.0
    trend_brakes: bool = False

    def policy_config(self, budget_watts: float, uniform: bool) -> PowerPolicyConfig:
        return PowerPolicyConfig(
            budget_watts=budget_watts,
            cap_threshold=self.cap_threshold,
            uncap_threshold=self.uncap_threshold,
            hard_threshold=self.hard_threshold,
            cap_fraction=self.cap_fraction,
            brake_fraction=self.brake_fraction,
            # A reading must have had the time to show the previous cap before the next group.
            escalate_every_s=self.report_s + self.telemetry_delay_s + self.actuation_s,
            lift_after_s=self.lift_after_s,
            stale_after_s=max(5.0, 3 * self.report_s + self.telemetry_delay_s),
            uniform=uniform,
            trend_lookahead_s=self.trend_lookahead_s,
            trend_brakes=self.trend_brakes,
        )


def server_watts(srv: Server) -> float:
    """The draw of ``srv`` now: the iteration in flight under its (possibly capped) model."""
    if srv.removed:
        return 0.0
    m = srv.model
    if not srv.busy:
        return m.idle_watts
    p = srv.step_p if srv.step_chunks is not None else 0
    return m.power_watts(srv.step_B, p)


class _TimedCollector(Collector):
    """Collector that also buckets attainment by completion time, per tier."""

    def __init__(self, n_tiers: int, bucket_s: float) -> None:
        super().__init__(n_tiers)
        self.sim: Simulator | None = None
        self.bucket_s = bucket_s
        self.buckets: dict[int, list[list[int]]] = {}

    def record(
        self,
        tier: int,
        ttft_s: float,
        tpot_s: float,
        deadline_ok: bool,
        rejected: bool,
        spilled: bool,
        queue_s: float,
        server: int,
    ) -> None:
        super().record(tier, ttft_s, tpot_s, deadline_ok, rejected, spilled, queue_s, server)
        now = self.sim.now if self.sim is not None else 0.0
        b = self.buckets.setdefault(int(now // self.bucket_s), [[0, 0] for _ in range(self.n_tiers)])
        b[tier][0] += 1 if deadline_ok and not rejected else 0
        b[tier][1] += 1


class PowerControlHook(Hook):
    """Agent + telemetry + PowerBudget controller around the simulated fleet."""

    def __init__(
        self,
        spec: PowerSimSpec,
        sc: Scenario,
        base_model: LatencyModel,
        budget_watts: float,
        mode: str,
    ) -> None:
        self.interval_s = spec.sample_s
        self.spec = spec
        self.base = base_model
        self.mode = mode  # "watch" (never caps), "uniform", "polca"
        self.config = spec.policy_config(budget_watts, uniform=mode == "uniform")
        self.tiers = {t.name: t for t in sc.tiers}
        self.state = PowerState()
        self.clock = ThresholdClock()  # on the true draw sampled every sample_s
        self.clock_1s = ThresholdClock()  # on its 1 s means (what a rack meter / breaker integrates)
        self._second: list[float] = []
        self._second_start = 0.0
        self.window = PowerWindow(spec.p99_window_s)
        self._sums: dict[str, float] = {}
        self._count = 0
        self._next_report = 0.0
        self._next_control = 0.0
        self._in_flight: deque[tuple[float, float, dict[str, float]]] = deque()  # (deliver_at, measured_at, watts)
        # sid -> (watts, measured_at). The agents ran before the measurement starts: every
        # server has an idle reading at t=0 (else all would count at their maximum: brake).
        self.latest: dict[str, tuple[float, float]] = {}
        self.caps: dict[str, float | None] = {}
        self.series: list[dict[str, Any]] = []
        self._interval_samples: list[float] = []
        self.cap_changes = 0
        self.peak_watts = 0.0

    def on_tick(self, sim: Simulator, now: float) -> None:
        live = [s for s in sim.servers if not s.removed]
        for s in live:
            if s.sid not in self.latest:
                self.latest[s.sid] = (s.model.idle_watts, now)
        total = 0.0
        for s in live:
            w = server_watts(s)
            total += w
            self._sums[s.sid] = self._sums.get(s.sid, 0.0) + w
        self._count += 1
        self.clock.observe(now, total, self.config)
        self._interval_samples.append(total)
        if now - self._second_start >= 1.0 - 1e-9 and self._second:
            self.clock_1s.observe(self._second_start, sum(self._second) / len(self._second), self.config)
            self._second = []
            self._second_start = now
        self._second.append(total)
        self.peak_watts = max(self.peak_watts, total)
        if now >= self._next_report:
            means = {sid: v / self._count for sid, v in self._sums.items()}
            self._in_flight.append((now + self.spec.telemetry_delay_s, now, means))
            self._sums.clear()
            self._count = 0
            self._next_report = now + self.spec.report_s - 1e-9
        while self._in_flight and self._in_flight[0][0] <= now + 1e-9:
            _, measured_at, means = self._in_flight.popleft()
            for sid, w in means.items():
                self.latest[sid] = (w, measured_at)
        if now >= self._next_control:
            self._next_control = now + self.spec.control_s - 1e-9
            self._control(sim, now, live)

    def _control(self, sim: Simulator, now: float, live: list[Server]) -> None:
        readings = []
        for s in live:
            tier = self.tiers[s.tier]
            w, at = self.latest.get(s.sid, (None, None))
            readings.append(
                ServerReading(
                    server=s.sid,
                    tier=s.tier,
                    tier_priority=tier.priority,
                    tier_tpot_ms=tier.tpot_ms,
                    max_watts=self.base.tdp_watts,
                    watts=w,
                    measured_at=at,
                    cap_watts=self.caps.get(s.sid),
                )
            )
        d = decide(readings, self.state, self.config, now)
        self.state = d.state
        self.window.add(now, d.domain_watts)
        samples = self._interval_samples
        self._interval_samples = []
        capped_by_tier: dict[str, int] = {}
        if self.mode != "watch":
            for s in live:
                cap = d.caps.get(s.sid)
                if cap is not None:
                    capped_by_tier[s.tier] = capped_by_tier.get(s.tier, 0) + 1
                if cap != self.caps.get(s.sid):
                    self.caps[s.sid] = cap
                    self.cap_changes += 1
                    sim.call_at(now + self.spec.actuation_s, self._actuator(s, cap))
        self.series.append(
            {
                "t": round(now, 3),
                "domainWatts": round(sum(samples) / len(samples), 1) if samples else 0.0,
                "telemetryWatts": round(d.domain_watts, 1),
                "level": d.level if self.mode != "watch" else "normal",
                "cappedByTier": capped_by_tier,
            }
        )

    def _actuator(self, srv: Server, cap: float | None) -> Callable[[Simulator, float], None]:
        def apply(sim: Simulator, t: float) -> None:
            if self.caps.get(srv.sid) == cap:  # not superseded in the meantime
                sim.set_model(srv, capped_model(self.base, cap))

        return apply


def split_servers(sc: Scenario, n: int) -> list[str]:
    """``n`` servers over the scenario's tiers in its proportions (largest remainder, ties in tier order)."""
    base = sc.server_tiers()
    counts = {t.name: base.count(t.name) for t in sc.tiers}
    total = sum(counts.values())
    exact = {k: v * n / total for k, v in counts.items()}
    out = {k: math.floor(v) for k, v in exact.items()}
    rest = n - sum(out.values())
    for k in sorted(exact, key=lambda k: -(exact[k] - out[k]))[:rest]:
        out[k] += 1
    return [t.name for t in sc.tiers for _ in range(out[t.name])]


@dataclass
class ArmResult:
    arm: str
    servers: int
    servers_by_tier: dict[str, int]
    load_scale: float
    requests: int
    attainment: dict[str, float]
    attainment_target: dict[str, float]
    above_cap_s: float
    above_hard_s: float
    above_budget_s: float
    above_hard_1s_s: float
    above_budget_1s_s: float
    duration_s: float
    peak_percent: float
    p99_percent: float | None
    brake_events: int
    cap_changes: int
    servers_allowed: int
    series: list[dict[str, Any]] = field(repr=False, default_factory=list)
    attainment_series: list[dict[str, Any]] = field(repr=False, default_factory=list)


def run_arm(spec: PowerSimSpec, arm: str, traces_dir: Path | None = None) -> ArmResult:
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; one of {', '.join(ARMS)}")
    sc = load_scenario(spec.scenario)
    if spec.duration_s is not None:
        sc = sc.model_copy(update={"workload": sc.workload.model_copy(update={"duration_s": spec.duration_s})})
    model = load_profile(sc.profile)
    budget = spec.budget_servers * model.tdp_watts
    n0 = nominal_servers(budget, model.tdp_watts)
    n = n0 if arm == "nominal" else math.floor(n0 * spec.ratio + 1e-9)
    load = spec.rate_scale * n / n0
    mode = {"nominal": "watch", "oversubscribed-uncapped": "watch", "uniform": "uniform", "polca": "polca"}[arm]
    hook = PowerControlHook(spec, sc, model, budget, mode)
    cfg = SimConfig(
        tiers=[TierSLO.from_api(t) for t in sc.tiers],
        server_tiers=split_servers(sc, n),
        model=model,
        policy_kind=POLICY_KINDS["kubetier"],
        seed=sc.seed,
        model_load_s=sc.fleet.model_load_s,
        hooks=[hook],
    )
    col = _TimedCollector(len(sc.tiers), spec.bucket_s)
    sim = Simulator(cfg, sink=cast(OutcomeSink, col))  # Collector has OutcomeSink's shape
    col.sim = sim
    sim.run(arrivals(sc, load, traces_dir))
    names = [t.name for t in sc.tiers]
    stats = summarize(
        col,
        names,
        [t.ttft_ms for t in sc.tiers],
        [t.tpot_ms for t in sc.tiers],
        [t.attainment_percent for t in sc.tiers],
    )
    attain = {s.name: round(s.attainment_deadline, 3) for s in stats}
    att_series = []
    for b in sorted(col.buckets):
        row: dict[str, Any] = {"t": b * spec.bucket_s}
        for i, name in enumerate(names):
            ok, tot = col.buckets[b][i]
            row[name] = round(100.0 * ok / tot, 2) if tot else None
        att_series.append(row)
    p99 = hook.window.percentile(0.99)
    return ArmResult(
        arm=arm,
        servers=n,
        servers_by_tier={name: cfg.server_tiers.count(name) for name in names},
        load_scale=round(load, 4),
        requests=sim.n_arrived,
        attainment=attain,
        attainment_target={t.name: t.attainment_percent for t in sc.tiers},
        above_cap_s=round(hook.clock.above_cap_s, 2),
        above_hard_s=round(hook.clock.above_hard_s, 2),
        above_budget_s=round(hook.clock.above_budget_s, 2),
        above_hard_1s_s=round(hook.clock_1s.above_hard_s, 2),
        above_budget_1s_s=round(hook.clock_1s.above_budget_s, 2),
        duration_s=round(sim.now, 1),
        peak_percent=round(100.0 * hook.peak_watts / budget, 2),
        p99_percent=None if p99 is None else round(100.0 * p99 / budget, 2),
        brake_events=hook.state.brake_events if mode != "watch" else 0,
        cap_changes=hook.cap_changes,
        servers_allowed=servers_allowed(budget, model.tdp_watts, spec.ratio, n, p99, spec.cap_threshold),
        series=hook.series,
        attainment_series=att_series,
    )


def compare_power(spec: PowerSimSpec, traces_dir: Path | None = None, arms: tuple[str, ...] = ARMS) -> dict[str, Any]:
    results = [run_arm(spec, a, traces_dir) for a in arms]
    by = {r.arm: r for r in results}
    sc = load_scenario(spec.scenario)
    tight = min(sc.tiers, key=lambda t: t.tpot_ms).name
    verdict: dict[str, Any] = {"tightTier": tight}
    if "nominal" in by:
        base = by["nominal"]
        for arm in ("uniform", "polca"):
            if arm in by:
                r = by[arm]
                verdict[arm] = {
                    "serversGainPercent": round(100.0 * (r.servers / base.servers - 1.0), 1),
                    "tightTierDeltaPp": round(r.attainment[tight] - base.attainment[tight], 3),
                    "meetsGoal": r.servers >= 1.3 * base.servers
                    and r.attainment[tight] >= base.attainment[tight] - 0.5
                    and r.above_budget_1s_s == 0.0,
                    "aboveBudgetSamplesS": r.above_budget_s,
                }
    budget = spec.budget_servers * load_profile(sc.profile).tdp_watts
    return {"spec": asdict(spec), "budgetWatts": budget, "arms": [asdict(r) for r in results], "verdict": verdict}


def table(result: dict[str, Any]) -> str:
    arms = result["arms"]
    tiers = list(arms[0]["attainment"])
    head = f"{'arm':<24}{'servers':>8}{'load':>6}" + "".join(f"{t[:11]:>12}" for t in tiers)
    head += f"{'>cap':>7}{'>hard':>7}{'>budget':>8}{'>hard1s':>8}{'>bud1s':>7}{'peak%':>7}{'p99%':>6}{'brakes':>7}{'caps':>6}"
    lines = [
        "attainment per tier in % (per-token deadlines). Seconds above the cap/hard thresholds and the budget:",
        "true domain draw sampled every sample_s (>cap, >hard, >budget) and its 1 s means (>hard1s, >bud1s).",
        head,
    ]
    for a in arms:
        row = f"{a['arm']:<24}{a['servers']:>8}{a['load_scale']:>6.2f}"
        row += "".join(f"{a['attainment'][t]:>12.2f}" for t in tiers)
        p99 = a["p99_percent"]
        row += f"{a['above_cap_s']:>7.1f}{a['above_hard_s']:>7.1f}{a['above_budget_s']:>8.1f}"
        row += f"{a['above_hard_1s_s']:>8.1f}{a['above_budget_1s_s']:>7.1f}{a['peak_percent']:>7.1f}"
        row += f"{(p99 if p99 is not None else float('nan')):>6.1f}{a['brake_events']:>7}{a['cap_changes']:>6}"
        lines.append(row)
    v = result["verdict"]
    by_arm = {a["arm"]: a for a in arms}
    for arm in ("uniform", "polca"):
        if arm in v:
            x = v[arm]
            lines.append(
                f"{arm}: +{x['serversGainPercent']}% servers, {v['tightTier']} attainment "
                f"{x['tightTierDeltaPp']:+.2f} pp vs nominal, 1 s means above budget "
                f"{by_arm[arm]['above_budget_1s_s']:.1f} s: goal {'met' if x['meetsGoal'] else 'NOT met'}"
            )
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    arms = result["arms"]
    fig, ax = plt.subplots(figsize=(10, 4))
    for a in arms:
        xs = [p["t"] for p in a["series"]]
        ys = [p["domainWatts"] for p in a["series"]]
        ax.plot(xs, ys, label=a["arm"], lw=0.8)
    b_w = result["budgetWatts"]
    ax.axhline(b_w, color="k", ls="--", lw=0.8, label="budget")
    ax.axhline(b_w * result["spec"]["cap_threshold"], color="orange", ls=":", lw=0.8, label="cap threshold")
    ax.axhline(b_w * result["spec"]["hard_threshold"], color="red", ls=":", lw=0.8, label="hard threshold")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("domain power (W, 1 s mean)")
    ax.legend(fontsize=7)
    p = out / "power-domain.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    capped_arms = [a for a in arms if a["arm"] in ("uniform", "polca")]
    if capped_arms:
        fig, axes = plt.subplots(len(capped_arms), 1, figsize=(10, 2.6 * len(capped_arms)), sharex=True, squeeze=False)
        for ax, a in zip(axes[:, 0], capped_arms):
            tiers = list(a["attainment"])
            xs = [p["t"] for p in a["series"]]
            for t in tiers:
                ax.step(xs, [p["cappedByTier"].get(t, 0) for p in a["series"]], where="post", label=t, lw=0.9)
            ax.set_ylabel(f"{a['arm']}\ncapped servers")
            ax.legend(fontsize=7)
        axes[-1, 0].set_xlabel("simulated time (s)")
        p = out / "power-caps-per-tier.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    tiers = list(arms[0]["attainment"])
    fig, axes = plt.subplots(len(tiers), 1, figsize=(10, 2.4 * len(tiers)), sharex=True, squeeze=False)
    for ax, t in zip(axes[:, 0], tiers):
        for a in arms:
            xs = [r["t"] for r in a["attainment_series"] if r.get(t) is not None]
            ys = [r[t] for r in a["attainment_series"] if r.get(t) is not None]
            ax.plot(xs, ys, label=a["arm"], lw=0.9)
        ax.set_ylabel(f"{t}\nattainment %")
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("simulated time (s), by completion")
    p = out / "power-attainment.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def write(result: dict[str, Any], out: Path, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    p = out / "power-result.json"
    p.write_text(json.dumps(result, indent=1))
    return [p, *(plot(result, out) if plots else [])]
