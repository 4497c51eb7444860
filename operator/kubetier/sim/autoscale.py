"""Autoscaling and pre-warm in the fleet simulator: the operator's policy code
(``kubetier.policy.autoscale`` and ``kubetier.policy.prewarm``) driven by a simulator hook,
against baselines, on generated and traced workloads.

Policies compared (``POLICIES``):

* ``kubetier``: the per-tier autoscaler plus the hybrid-histogram pre-warm policy and the
  Holt forecast for standby servers (promoted by a sleep-mode wake, not a cold start).
* ``no-prewarm``: the same autoscaler with the tiers' fixed ``keepAliveSeconds``, no
  histogram, no standby.
* ``keepalive-10m``: the same autoscaler with a fixed 10-minute keep-alive for every tier.
* ``knative``: a Knative-KPA-like concurrency autoscaler (stable/panic windows at the
  same target, scale-to-zero after Knative's 30 s grace, scale in at once to the stable
  desire, no early signals, no pre-warm).
* ``static-peak``: no autoscaler; every tier runs all the time with the most serving
  servers the ``kubetier`` run ever used (the fleet an operator sizes for the peak).

Measured per run: GPU-hours (every server from creation to removal, model load included,
standbys included), cold starts (requests that found their tier with no ready server and
arrived while their tier had no ready server of its own, at TICK_S granularity; and
scale-from-zero events), idle
GPU-seconds (a loaded server with nothing to do, standbys included; sampled every tick),
per-tier attainment (the simulator's deadline form), and the replicas-per-tier timeline.

Model-load time is a parameter (:class:`LoadTime`): fixed, or LogNormal fitted to
published cold starts (see ``LOAD_PRESETS``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kubetier.policy.autoscale import (
    AutoscalerConfig,
    ServerState,
    TierAutoscaler,
    TierDemand,
    TierScaling,
    target_concurrency,
)
from kubetier.policy.latency import LatencyModel, load_profile
from kubetier.policy.prewarm import TierPrewarmer
from kubetier.policy.routing import TierSLO

from . import workload as wl
from .engine import Hook, OutcomeSink, Server, SimConfig, Simulator
from .metrics import Collector, TierStats, summarize

POLICIES = ("kubetier", "no-prewarm", "keepalive-10m", "knative", "static-peak")
TICK_S = 2.0  # the Knative KPA's tick
KNATIVE_GRACE_S = 30.0  # Knative's scale-to-zero grace period
FIXED_KEEP_ALIVE_S = 600.0


@dataclass(frozen=True)
class LoadTime:
    """Seconds from creating a server to serving: fixed, or LogNormal(median, sigma)."""

    kind: str  # "fixed" | "lognormal"
    median_s: float
    sigma: float = 0.0
    label: str = ""

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.median_s
        return rng.lognormvariate(math.log(self.median_s), self.sigma)

    @property
    def mean_s(self) -> float:
        return self.median_s if self.kind == "fixed" else self.median_s * math.exp(self.sigma**2 / 2)


def _fit(lo: float, hi: float, label: str) -> LoadTime:
    """LogNormal with lo and hi one sigma either side of the median (geometric mean)."""
    return LoadTime("lognormal", math.sqrt(lo * hi), math.log(hi / lo) / 2.0, label)


# Published cold starts: vLLM engine start-up for Llama-3-8B 14.2 s before weights (vLLM
# PR #11005) and about 48 s for a full model reload without sleep mode (vLLM blog
# 2025-10-26, "zero reload model switching"); SkyServe measured 410-524 s for a 70B
# replica. Sleep-mode wake: 0.26-0.82 s for small models, 3-6 s for large (same blog).
LOAD_PRESETS: dict[str, LoadTime] = {
    "8b": _fit(14.2, 48.0, "LogNormal fit to vLLM 8B: 14.2 s engine start .. 48 s full reload"),
    "70b": _fit(410.0, 524.0, "LogNormal fit to SkyServe 70B: 410-524 s"),
    "wake-small": _fit(0.26, 0.82, "sleep-mode wake, small models: 0.26-0.82 s"),
    "wake-large": _fit(3.0, 6.0, "sleep-mode wake, large models: 3-6 s"),
}


def parse_load_time(text: str) -> LoadTime:
    """A preset name (``8b``, ``70b``, ``wake-small``, ``wake-large``) or seconds (fixed)."""
    if text in LOAD_PRESETS:
        return LOAD_PRESETS[text]
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"load time {text!r}: a number of seconds or one of {', '.join(LOAD_PRESETS)}") from None
    if not v >= 0:
        raise ValueError(f"load time {text!r} must be >= 0 seconds")
    return LoadTime("fixed", v, 0.0, f"fixed {v:g} s")


# ------------------------------------------------------------------ workloads


@dataclass(frozen=True)
class TierSetup:
    name: str
    ttft_ms: float
    tpot_ms: float
    priority: int
    attainment_percent: float
    min_replicas: int
    max_replicas: int
    keep_alive_s: float
    mean_prompt_tokens: int
    mean_output_tokens: int
    on_late: str = "reject"
    standby: int = 0

    @property
    def slo(self) -> TierSLO:
        return TierSLO(
            self.name,
            self.ttft_ms,
            self.tpot_ms,
            self.priority,
            self.mean_output_tokens,
            "queue" if self.on_late == "queue" else "reject",
        )


def default_tiers(keep_alive_s: float = 300.0) -> list[TierSetup]:
    """An interactive tier that always serves and a batch tier that may scale to zero."""
    return [
        TierSetup("interactive", 1000, 20, 100, 90.0, 1, 16, keep_alive_s, 1000, 250),
        TierSetup("batch", 60_000, 150, 10, 90.0, 0, 8, keep_alive_s, 2000, 400, on_late="queue"),
    ]


def _length(mean: int) -> wl.LengthDist:
    return wl.LengthDist("lognormal", mean, mean * 0.8, 1, 8 * mean)


def _tagged(rows: Iterator[tuple[float, int, int]], tier: int, end_s: float) -> Iterator[wl.Arrival]:
    for t, p, o in rows:
        if t >= end_s:
            return
        yield wl.Arrival(t, p, o, tier)


def _periodic_jobs(
    tiers: list[TierSetup],
    tier: int,
    period_s: float,
    jitter_s: float,
    job_s: float,
    rate: float,
    end_s: float,
    seed: int,
) -> Iterator[wl.Arrival]:
    """Batch jobs: every ``period_s`` (+- jitter) a ``job_s`` burst of Poisson arrivals at
    ``rate``; idle in between (the idle-time pattern the hybrid histogram learns)."""
    rng = random.Random(seed)
    t0 = rng.uniform(0, period_s / 2)
    setup = tiers[tier]
    while t0 < end_s:
        t = t0
        while t < t0 + job_s and t < end_s:
            p = max(1, int(rng.lognormvariate(math.log(setup.mean_prompt_tokens), 0.6)))
            o = max(1, int(rng.lognormvariate(math.log(setup.mean_output_tokens), 0.6)))
            yield wl.Arrival(t, p, o, tier)
            t += rng.expovariate(rate)
        t0 += period_s + rng.uniform(-jitter_s, jitter_s)


WORKLOADS = ("diurnal", "bursty", "azure")
# Batch jobs every ~15 min: longer than a fixed 10-minute keep-alive (so it cold-starts
# every job) and short enough that a few hours give the histogram its 10 idle periods.
JOB_PERIOD_S = 15 * 60.0


def make_workload(
    name: str, tiers: list[TierSetup], duration_s: float, seed: int, traces_dir: Path | None, rate: float
) -> Iterator[wl.Arrival]:
    """``diurnal``: interactive Poisson with a sinusoidal day compressed to the run
    (amplitude 0.9), batch jobs every ~15 min; ``bursty``: interactive Gamma arrivals
    (CV 4, BurstGPT-like) plus the same batch jobs; ``azure``: the Azure LLM 2023 traces
    (conversation -> interactive, code -> batch), looped to the duration."""
    it, bt = 0, 1
    if name == "diurnal":
        inter = wl.synthetic(
            "diurnal",
            rate,
            _length(tiers[it].mean_prompt_tokens),
            _length(tiers[it].mean_output_tokens),
            seed,
            amplitude=0.9,
            period_s=duration_s,
        )
    elif name == "bursty":
        inter = wl.synthetic(
            "gamma", rate, _length(tiers[it].mean_prompt_tokens), _length(tiers[it].mean_output_tokens), seed, cv=4.0
        )
    elif name == "azure":
        conv = wl.resolve_trace("azure_llm_2023_conv", traces_dir)
        code = wl.resolve_trace("azure_llm_2023_code", traces_dir)
        return wl.merge([_loop_trace(conv, it, duration_s, rate), _loop_trace(code, bt, duration_s, rate)])
    else:
        raise ValueError(f"workload {name!r} is unknown (known: {', '.join(WORKLOADS)})")
    jobs = _periodic_jobs(tiers, bt, JOB_PERIOD_S, 60.0, 90.0, 2.0, duration_s, seed + 1)
    return wl.merge([_tagged(inter, it, duration_s), jobs])


def _loop_trace(path: Path, tier: int, duration_s: float, rate_scale: float) -> Iterator[wl.Arrival]:
    rows = list(wl.read_trace(path))
    if not rows:
        return
    t_first = rows[0][0]
    span = rows[-1][0] - t_first + 1.0
    offset = 0.0
    while True:
        for t, p, o in rows:
            tt = (t - t_first + offset) / rate_scale
            if tt >= duration_s:
                return
            yield wl.Arrival(tt, p, o, tier)
        offset += span


# ------------------------------------------------------------------ the hook


class _Sink(OutcomeSink):
    """Forwards to the Collector and counts rejections per tier for the demand snapshot."""

    def __init__(self, col: Collector, n: int) -> None:
        self.col = col
        self.rejected = [0] * n
        self.completed = [0] * n

    def record(self, tier, ttft_s, tpot_s, deadline_ok, rejected, spilled, queue_s, server) -> None:
        self.col.record(tier, ttft_s, tpot_s, deadline_ok, rejected, spilled, queue_s, server)
        if rejected:
            self.rejected[tier] += 1
        else:
            self.completed[tier] += 1


@dataclass
class _Standby:
    sid: str
    tier: str
    created: float
    ready_at: float


@dataclass
class Accounting:
    created: dict[str, float] = field(default_factory=dict)
    removed: dict[str, float] = field(default_factory=dict)
    standby_s: float = 0.0
    idle_gpu_s: float = 0.0
    cold_start_requests: int = 0
    cold_start_events: int = 0
    promotions: int = 0
    starts: int = 0
    timeline: list[tuple[float, list[int], list[int], list[int]]] = field(default_factory=list)
    reasons: list[tuple[float, str, str]] = field(default_factory=list)


class AutoscaleHook(Hook):
    """Runs one policy every ``TICK_S`` against the simulator."""

    interval_s = TICK_S

    def __init__(
        self,
        mode: str,
        tiers: list[TierSetup],
        model: LatencyModel,
        load: LoadTime,
        wake: LoadTime,
        seed: int,
        counter: list[int],
        sink: _Sink,
        gpus: int,
    ) -> None:
        self.mode = mode
        self.tiers = tiers
        self.names = [t.name for t in tiers]
        self.load = load
        self.wake = wake
        self.rng = random.Random(seed)
        self.arrived = counter  # arrivals per tier so far (the workload wrapper counts)
        self._arrived_prev = [0] * len(tiers)
        self._rejected_prev = [0] * len(tiers)
        self.sink = sink
        self.gpus = gpus
        self.acc = Accounting()
        self.standby: list[_Standby] = []
        self._n_standby = 0
        self._ready_prev = [t.min_replicas for t in tiers]
        self.targets = [
            target_concurrency(model, t.tpot_ms / 1000.0, t.mean_prompt_tokens, t.mean_output_tokens) for t in tiers
        ]
        keep = {
            "kubetier": None,
            "no-prewarm": None,
            "keepalive-10m": FIXED_KEEP_ALIVE_S,
            "knative": KNATIVE_GRACE_S,
        }[mode]
        self.scalings = [
            TierScaling(
                name=t.name,
                ttft_s=t.ttft_ms / 1000.0,
                tpot_s=t.tpot_ms / 1000.0,
                target_per_server=self.targets[i],
                min_replicas=t.min_replicas,
                max_replicas=t.max_replicas,
                standby=t.standby if mode == "kubetier" else 0,
                scale_to_zero=t.min_replicas == 0,
                keep_alive_s=t.keep_alive_s if keep is None else keep,
                attainment_target_percent=t.attainment_percent,
                priority=t.priority,
            )
            for i, t in enumerate(tiers)
        ]
        cfg = (
            AutoscalerConfig(scale_in_delay_s=0.0, early_scale_out=False, scale_in_step=0, scale_in_quiet_s=0.0)
            if mode == "knative"
            else AutoscalerConfig()
        )
        self.scaler = TierAutoscaler(self.scalings, cfg)
        self.prewarmer = TierPrewarmer(self.names) if mode == "kubetier" else None

    # -------------------------------------------------------------- helpers

    def note_initial(self, sim: Simulator) -> None:
        for s in sim.servers:
            self.acc.created[s.sid] = 0.0

    def _start(self, sim: Simulator, tier: str, delay: float) -> Server:
        srv = sim.add_server(tier, ready_after_s=delay)
        self.acc.created[srv.sid] = sim.now
        return srv

    def on_tick(self, sim: Simulator, now: float) -> None:
        n = len(self.tiers)
        idx = {name: i for i, name in enumerate(self.names)}
        live = [s for s in sim.servers if not s.removed]
        # per-tier in-flight requests, split by where they run (spills)
        own = [0] * n
        spilled_out = [0] * n
        spilled_in = [0] * n
        states: list[ServerState] = []
        ready_serving = [0] * n
        for s in live:
            st = idx[s.tier]
            reqs = list(s.waiting) + list(s.prefilling) + [e[2] for e in s.running_heap if not e[2].state]
            for r in reqs:
                if r.tier == st:
                    own[st] += 1
                else:
                    spilled_out[r.tier] += 1
                    spilled_in[st] += 1
            ready = now >= s.ready_at
            busy = bool(reqs)
            if ready and not busy:
                self.acc.idle_gpu_s += TICK_S
            if ready and not s.draining:
                ready_serving[st] += 1
            states.append(
                ServerState(
                    server_id=s.sid,
                    tier=s.tier,
                    ready=ready,
                    draining=s.draining,
                    running=len(reqs),
                    queued=len(s.waiting),
                    kv_usage=s.kv / s.kv_cap if s.kv_cap else 0.0,
                    started_s=self.acc.created.get(s.sid, 0.0),
                )
            )
        for sb in self.standby:
            ready = now >= sb.ready_at
            if ready:
                self.acc.idle_gpu_s += TICK_S
            states.append(ServerState(server_id=sb.sid, tier=sb.tier, ready=ready, standby=True, started_s=sb.created))
        demand: dict[str, TierDemand] = {}
        # The router's wait queue is one heap in waiting order (kubetier.policy.waiting):
        # per tier, the requests held and the oldest arrival among them.
        held: list[list[float]] = [[] for _ in self.names]
        for _key, req in sim.waitq:
            if req.waiting:
                held[req.tier].append(req.t_arr)
        for i, name in enumerate(self.names):
            q = sorted(held[i])
            arrivals = self.arrived[i] - self._arrived_prev[i]
            rejected = self.sink.rejected[i] - self._rejected_prev[i]
            self._arrived_prev[i] = self.arrived[i]
            self._rejected_prev[i] = self.sink.rejected[i]
            if self._ready_prev[i] == 0:
                # arrived while the tier had no ready server of its own (at the previous
                # tick; TICK_S granularity): a cold start, whether it then waited for the
                # load or was spilled onto a tighter tier
                self.acc.cold_start_requests += arrivals
            demand[name] = TierDemand(
                tier=name,
                waiting=len(q),
                oldest_wait_s=(now - q[0]) if q else 0.0,
                spilled_out_running=spilled_out[i],
                spilled_in_running=spilled_in[i],
                arrivals=arrivals,
                rejected=rejected,
            )
        self._ready_prev = ready_serving
        keep: dict[str, float] | None = None
        standby: dict[str, int] | None = None
        warm: dict[str, int] | None = None
        if self.prewarmer is not None:
            keep, standby, warm = {}, {}, {}
            for i, t in enumerate(self.scalings):
                conc = float(own[i] + spilled_out[i] + len(held[i]))
                self.prewarmer.observe(now, t.name, conc, demand[t.name].arrivals)
                serving = sum(1 for s in states if s.tier == t.name and not s.standby and not s.draining)
                p = self.prewarmer.decide(
                    now,
                    t.name,
                    fixed_keep_alive_s=t.keep_alive_s,
                    load_s=self.load.mean_s,
                    target_per_server=t.target_per_server,
                    serving=serving,
                    spec_standby=t.standby,
                    max_standby=1,
                )
                keep[t.name], standby[t.name], warm[t.name] = p.keep_alive_s, p.standby, p.warm_floor
        used = len(live) + len(self.standby)
        decision = self.scaler.decide(
            now, demand, states, max(0, self.gpus - used), keep_alive_s=keep, standby=standby, warm_floor=warm
        )
        by_sid = sim.by_sid
        for d in decision.tiers:
            i = idx[d.tier]
            for sid in d.drain:
                sim.drain_server(by_sid[sid])
            for sid in d.remove:
                srv = by_sid[sid]
                if not srv.removed:
                    sim.remove_server(srv)
                    self.acc.removed[sid] = now
            for sid in d.promote:
                sb = next(b for b in self.standby if b.sid == sid)
                self.standby.remove(sb)
                self.acc.standby_s += now - sb.created
                self._start(sim, d.tier, self.wake.sample(self.rng))
                self.acc.promotions += 1
            for sid in d.remove_standby:
                sb = next(b for b in self.standby if b.sid == sid)
                self.standby.remove(sb)
                self.acc.standby_s += now - sb.created
            if d.start and ready_serving[i] == 0 and not d.promote and (held[i] or demand[d.tier].arrivals):
                self.acc.cold_start_events += 1
            for _ in range(d.start):
                self._start(sim, d.tier, self.load.sample(self.rng))
                self.acc.starts += 1
            for _ in range(d.start_standby):
                self._n_standby += 1
                self.standby.append(
                    _Standby(f"sb{self._n_standby}-{d.tier}", d.tier, now, now + self.load.sample(self.rng))
                )
            if d.changed:
                self.acc.reasons.append((now, d.tier, d.reason))
        serving_now = [0] * n
        for s in sim.servers:
            if not s.removed and not s.draining:
                serving_now[idx[s.tier]] += 1
        sb_count = [0] * n
        for sb in self.standby:
            sb_count[idx[sb.tier]] += 1
        self.acc.timeline.append((now, serving_now, sb_count, [demand[nm].arrivals for nm in self.names]))

    def gpu_seconds(self, end: float) -> float:
        total = sum(self.acc.removed.get(sid, end) - t0 for sid, t0 in self.acc.created.items())
        total += self.acc.standby_s + sum(end - sb.created for sb in self.standby)
        return total


# ------------------------------------------------------------------ one run, the comparison


@dataclass
class PolicyResult:
    policy: str
    gpu_hours: float
    cold_start_requests: int
    cold_start_events: int
    idle_gpu_s: float
    promotions: int
    starts: int
    requests: int
    tiers: list[TierStats]
    timeline: list[tuple[float, list[int], list[int], list[int]]]
    peak_serving: list[int]
    wall_s: float

    def to_json(self) -> dict:
        return {
            "policy": self.policy,
            "gpuHours": round(self.gpu_hours, 3),
            "coldStartRequests": self.cold_start_requests,
            "coldStartEvents": self.cold_start_events,
            "idleGpuSeconds": round(self.idle_gpu_s, 1),
            "promotions": self.promotions,
            "serverStarts": self.starts,
            "requests": self.requests,
            "peakServing": self.peak_serving,
            "tiers": [
                {
                    "name": t.name,
                    "requests": t.requests,
                    "rejected": t.rejected,
                    "attainmentPercent": round(t.attainment_deadline, 2),
                    "targetPercent": t.target_percent,
                    "ttftP99Ms": None if math.isnan(t.ttft_p99_ms) else round(t.ttft_p99_ms, 1),
                }
                for t in self.tiers
            ],
            "wallSeconds": round(self.wall_s, 2),
        }


def _counting(stream: Iterator[wl.Arrival], counter: list[int]) -> Iterator[wl.Arrival]:
    for a in stream:
        counter[a.tier] += 1
        yield a


def run_policy(
    policy: str,
    tiers: list[TierSetup],
    model: LatencyModel,
    workload: str,
    duration_s: float,
    load: LoadTime,
    wake: LoadTime,
    seed: int,
    rate: float,
    gpus: int,
    traces_dir: Path | None,
    static_fleet: list[int] | None = None,
) -> PolicyResult:
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r} is unknown (known: {', '.join(POLICIES)})")
    col = Collector(len(tiers))
    sink = _Sink(col, len(tiers))
    counter = [0] * len(tiers)
    hook: AutoscaleHook | None = None
    if policy == "static-peak":
        if static_fleet is None:
            raise ValueError("static-peak needs the fleet size per tier")
        servers = [t.name for t, k in zip(tiers, static_fleet) for _ in range(k)]
    else:
        servers = [t.name for t in tiers for _ in range(t.min_replicas)]
        hook = AutoscaleHook(policy, tiers, model, load, wake, seed, counter, sink, gpus)
    cfg = SimConfig(
        tiers=[t.slo for t in tiers],
        server_tiers=servers,
        model=model,
        seed=seed,
        model_load_s=load.mean_s,
        hooks=[hook] if hook else [],
    )
    sim = Simulator(cfg, sink=sink)
    t0 = time.perf_counter()
    if hook is not None:
        hook.note_initial(sim)
    sim.run(_counting(make_workload(workload, tiers, duration_s, seed, traces_dir, rate), counter))
    wall = time.perf_counter() - t0
    end = max(sim.now, duration_s)
    stats = summarize(
        col, [t.name for t in tiers], [t.ttft_ms for t in tiers], [t.tpot_ms for t in tiers],
        [t.attainment_percent for t in tiers],
    )  # fmt: skip
    if hook is None:
        gpu_s = float(len(servers)) * end
        # a static server is idle whenever it has nothing to do: its busy time is known
        idle = sum(max(0.0, end - s.busy_s) for s in sim.servers)
        timeline = [(0.0, list(static_fleet or []), [0] * len(tiers), [0] * len(tiers))]
        acc = Accounting(idle_gpu_s=idle)
        peak = list(static_fleet or [])
    else:
        gpu_s = hook.gpu_seconds(end)
        acc = hook.acc
        timeline = acc.timeline
        peak = [max((row[1][i] for row in timeline), default=0) for i in range(len(tiers))]
    return PolicyResult(
        policy=policy,
        gpu_hours=gpu_s / 3600.0,
        cold_start_requests=acc.cold_start_requests,
        cold_start_events=acc.cold_start_events,
        idle_gpu_s=acc.idle_gpu_s,
        promotions=acc.promotions,
        starts=acc.starts,
        requests=sim.n_arrived,
        tiers=stats,
        timeline=timeline,
        peak_serving=peak,
        wall_s=wall,
    )


@dataclass
class Comparison:
    workload: str
    load: LoadTime
    wake: LoadTime
    duration_s: float
    results: dict[str, PolicyResult]

    def goals(self) -> dict[str, object]:
        k = self.results.get("kubetier")
        out: dict[str, object] = {}
        s = self.results.get("static-peak")
        if k and s and s.gpu_hours > 0:
            saving = 1.0 - k.gpu_hours / s.gpu_hours
            worst = min(
                (kt.attainment_deadline - st.attainment_deadline for kt, st in zip(k.tiers, s.tiers) if st.requests),
                default=0.0,
            )
            out["gpuHoursSavingVsStaticPeak"] = round(saving, 3)
            out["worstTierAttainmentDeltaVsStaticPeak"] = round(worst, 2)
            out["gpuHoursGoalMet"] = saving >= 0.30 and all(t.meets_target for t in k.tiers)
        f = self.results.get("keepalive-10m")
        if k and f:
            fewer = 1.0 - k.cold_start_requests / f.cold_start_requests if f.cold_start_requests else 0.0
            out["coldStartReductionVsKeepAlive10m"] = round(fewer, 3)
            out["idleGpuSecondsRatioVsKeepAlive10m"] = round(k.idle_gpu_s / f.idle_gpu_s, 3) if f.idle_gpu_s else None
            out["coldStartGoalMet"] = fewer >= 0.5 and k.idle_gpu_s <= f.idle_gpu_s
        return out

    def to_json(self) -> dict:
        return {
            "workload": self.workload,
            "durationS": self.duration_s,
            "modelLoad": {"kind": self.load.kind, "medianS": self.load.median_s, "sigma": self.load.sigma,
                          "label": self.load.label},
            "wake": {"kind": self.wake.kind, "medianS": self.wake.median_s, "sigma": self.wake.sigma,
                     "label": self.wake.label},
            "policies": {p: r.to_json() for p, r in self.results.items()},
            "goals": self.goals(),
        }  # fmt: skip


def compare(
    workload: str,
    duration_s: float,
    load: LoadTime,
    wake: LoadTime,
    policies: list[str],
    *,
    profile: str = "llama-3.1-8b-h100",
    seed: int = 1,
    rate: float = 4.0,
    gpus: int = 64,
    traces_dir: Path | None = None,
    tiers: list[TierSetup] | None = None,
    progress: bool = False,
) -> Comparison:
    """Run ``policies`` side by side on one workload (same arrivals, same seed)."""
    model = load_profile(profile)
    tiers = tiers or default_tiers()
    results: dict[str, PolicyResult] = {}
    order = [p for p in policies if p != "static-peak"]
    if "static-peak" in policies and "kubetier" not in order:
        order.insert(0, "kubetier")
    for p in order:
        results[p] = run_policy(p, tiers, model, workload, duration_s, load, wake, seed, rate, gpus, traces_dir)
        if progress:
            print(f"  {p}: {results[p].wall_s:.1f} s", flush=True)
    if "static-peak" in policies:
        peak = [max(1, k) for k in results["kubetier"].peak_serving]
        results["static-peak"] = run_policy(
            "static-peak", tiers, model, workload, duration_s, load, wake, seed, rate, gpus, traces_dir, peak
        )
    return Comparison(workload, load, wake, duration_s, {p: results[p] for p in policies if p in results})


def table(c: Comparison) -> str:
    names = [t.name for t in next(iter(c.results.values())).tiers]
    head = f"{'policy':<15}{'GPU-h':>8}{'cold req':>10}{'cold ev':>9}{'idle GPU-s':>12}{'promo':>7}"
    head += "".join(f"{('att% ' + n)[:14]:>15}" for n in names)
    lines = [
        f"workload {c.workload}, {c.duration_s / 3600:.2f} h, model load {c.load.label or c.load.kind}, "
        f"wake {c.wake.label or c.wake.kind}",
        head,
    ]
    for p, r in c.results.items():
        row = f"{p:<15}{r.gpu_hours:>8.2f}{r.cold_start_requests:>10}{r.cold_start_events:>9}{r.idle_gpu_s:>12.0f}"
        row += f"{r.promotions:>7}"
        row += "".join(f"{t.attainment_deadline:>15.2f}" for t in r.tiers)
        lines.append(row)
    g = c.goals()
    if g:
        lines.append("goals: " + ", ".join(f"{k}={v}" for k, v in g.items()))
    return "\n".join(lines)


def plot(c: Comparison, out: Path) -> list[Path]:
    """Replicas per tier over time against the arrival rate, one PNG per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    names = [t.name for t in next(iter(c.results.values())).tiers]
    for p, r in c.results.items():
        if p == "static-peak" or not r.timeline:
            continue
        fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.6 * len(names)), sharex=True)
        if len(names) == 1:
            axes = [axes]
        ts = [row[0] / 60.0 for row in r.timeline]
        for i, (ax, name) in enumerate(zip(axes, names)):
            ax.step(ts, [row[1][i] for row in r.timeline], where="post", label="serving replicas", color="C0")
            ax.step(ts, [row[2][i] for row in r.timeline], where="post", label="standby", color="C2")
            ax.set_ylabel(f"{name}\nreplicas")
            ax2 = ax.twinx()
            # arrival rate over a 1-minute moving window (ticks of TICK_S)
            w = max(1, int(60 / TICK_S))
            arr = [row[3][i] for row in r.timeline]
            rate = [sum(arr[max(0, j - w + 1) : j + 1]) / (min(j + 1, w) * TICK_S) for j in range(len(arr))]
            ax2.plot(ts, rate, color="C1", alpha=0.6, linewidth=0.8, label="arrivals/s (1-min avg)")
            ax2.set_ylabel("req/s")
            if i == 0:
                h1, l1 = ax.get_legend_handles_labels()
                h2, l2 = ax2.get_legend_handles_labels()
                ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=7)
        axes[-1].set_xlabel("minutes")
        fig.suptitle(f"{p}: replicas per tier vs arrival rate ({c.workload})")
        fig.tight_layout()
        path = out / f"replicas_{c.workload}_{p}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
