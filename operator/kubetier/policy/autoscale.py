"""Per-tier autoscaler: how many serving (and standby) servers each SLO tier should have.

Pure: the caller passes the clock (``now``, seconds on any monotonic scale) and the
observations; no I/O, no randomness. The operator runs it as its control loop and the
fleet simulator (``kubetier.sim.autoscale``) runs the same object against traces.

Inputs per decision (one :class:`TierDemand` per tier, already merged over every router
replica with :func:`merge_demand`; one :class:`ServerState` per server):

* **Concurrency** of a tier = requests on its own servers (engine running + waiting,
  minus the looser tiers' requests spilled onto them) + requests routers hold for it
  (``waiting``) + its requests running on tighter hosts after a spill. Concurrency, not
  request rate, is the Knative KPA's signal and suits LLM serving: a server's capacity
  is a batch size, and Little's law turns long generations into concurrency directly.
* **Target per server** (:func:`target_concurrency`): the largest batch whose decode
  iteration, with the prefill chunks the batch's turnover brings, still fits the tier's
  TPOT under the latency profile, times a target utilisation (Knative's default 70%).

Rules (constants from the Knative KPA and Dynamo planner, see ``AutoscalerConfig``):

1. **Stable and panic windows.** Average concurrency over the last 60 s (stable) and
   6 s (panic). Desired = ceil(average / target). When the panic-window demand reaches
   200% of what the ready servers target, the tier enters panic mode: it scales to the
   panic-window figure at once and does not scale in until a whole stable window passes
   without the condition (Knative's behaviour).
2. **Scale out before attainment drops.** One server more (on top of rule 1) when the
   routers' predicted attainment is within ``attainment_margin_percent`` of the tier's
   target, when a held request has waited more than ``wait_fraction_of_ttft`` of the
   TTFT, when requests were rejected, or when every ready server is saturated by the
   engine metrics (KV cache >= 80% or >= 5 queued, llm-d's former thresholds). Not
   while a start is already in flight (one step per signal, no stacking).
3. **Scale from zero** at once when a request is held or arrived for an empty tier.
4. **Scale in with hysteresis**: only outside panic, with no wait or rejection for a
   stable window, after the stable desire stayed below the current count for
   ``scale_in_delay_s``; one server per decision and only when none of the tier is
   already draining. The victim is the least-loaded ready server (fewest running, then
   least KV, then the newest): the router stops sending to it, in-flight streams finish,
   then it is removed (:func:`pod_deletion_costs` makes the ReplicaSet delete exactly it).
5. **Scale to zero** only with ``scaleToZero`` and ``min: 0``, after the tier had zero
   concurrency for its keep-alive (the spec's ``keepAliveSeconds`` or the pre-warm
   policy's choice).
6. **Bounds**: ``[max(min, onDemandFloor), max]`` while the tier serves (the on-demand
   floor is a count of replicas, so it is a floor on replicas; scale-to-zero wins over
   it because ``min: 0`` asked for it). New servers need free GPUs: tiers are served in
   priority order (then tightest TPOT), standbys of the tier are promoted first (no GPU
   needed, seconds instead of a cold start), then new servers start while GPUs last.
   Standby replenishment comes after every tier's serving needs.

Every :class:`TierDecision` carries a ``reason`` string that names the rule and the
figures; the operator turns it into an Event and ``status``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from kubetier.policy.latency import LatencyModel

__all__ = [
    "AutoscalerConfig",
    "FleetDecision",
    "ServerState",
    "TierAutoscaler",
    "TierDecision",
    "TierDemand",
    "TierScaling",
    "merge_demand",
    "pod_deletion_costs",
    "target_concurrency",
]


@dataclass(frozen=True)
class AutoscalerConfig:
    """Tunables; defaults are the published constants (sources in the module docstring)."""

    stable_window_s: float = 60.0  # Knative KPA stable window
    panic_window_s: float = 6.0  # Knative: 10% of the stable window
    panic_threshold: float = 2.0  # Knative: panic at 200% of target
    target_utilization: float = 0.7  # Knative's default container-concurrency utilisation
    scale_in_delay_s: float = 30.0  # stable desire below current this long before scale-in
    attainment_margin_percent: float = 2.0  # scale out when predicted attainment nears target
    wait_fraction_of_ttft: float = 0.25  # a held request older than this share of TTFT
    kv_saturation: float = 0.80  # llm-d's former saturation thresholds
    queue_saturation: int = 5
    # Switches that turn the policy into simpler baselines (the fleet simulator's Knative
    # stand-in): early signals off, scale in by any amount at once, no quiet period.
    early_scale_out: bool = True
    scale_in_step: int = 1  # servers drained per decision; 0 = as many as the windows allow
    scale_in_quiet_s: float | None = None  # no wait/reject this long before scale-in; None = stable window
    target_relax: float = 0.25  # share of the way back to the model's target per quiet stable window
    standby_release_s: float = 60.0  # a surplus standby goes only after being surplus this long

    def __post_init__(self) -> None:
        if not 0 < self.panic_window_s <= self.stable_window_s:
            raise ValueError("need 0 < panic_window_s <= stable_window_s")
        if self.panic_threshold <= 1.0:
            raise ValueError("panic_threshold must be > 1 (a ratio of demand to target)")
        if not 0 < self.target_utilization <= 1:
            raise ValueError("target_utilization must be in (0, 1]")
        if self.scale_in_delay_s < 0 or self.wait_fraction_of_ttft <= 0:
            raise ValueError("scale_in_delay_s >= 0 and wait_fraction_of_ttft > 0 required")


@dataclass(frozen=True)
class TierScaling:
    """What the spec and the latency model say about one tier (fixed between decisions)."""

    name: str
    ttft_s: float
    tpot_s: float
    target_per_server: float  # concurrency one server should carry (target_concurrency)
    min_replicas: int = 1
    max_replicas: int = 4
    on_demand_floor: int = 0
    standby: int = 0
    scale_to_zero: bool = False
    keep_alive_s: float = 300.0
    attainment_target_percent: float = 90.0
    priority: int = 0
    gpus_per_replica: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(f"tier {self.name!r}: need 0 <= min <= max and max >= 1")
        if self.min_replicas == 0 and not self.scale_to_zero:
            raise ValueError(f"tier {self.name!r}: min_replicas 0 requires scale_to_zero")
        if self.target_per_server <= 0 or self.ttft_s <= 0 or self.tpot_s <= 0:
            raise ValueError(f"tier {self.name!r}: target_per_server, ttft_s and tpot_s must be > 0")
        if self.standby < 0 or self.keep_alive_s < 0 or self.gpus_per_replica < 0 or self.on_demand_floor < 0:
            raise ValueError(f"tier {self.name!r}: standby, keep_alive_s, gpus, floor must be >= 0")


@dataclass(frozen=True)
class TierDemand:
    """What the routers saw for one tier since the previous snapshot (counts of events) or
    now (gauges). One router reports one; :func:`merge_demand` adds them up."""

    tier: str
    waiting: int = 0  # requests held by the routers now (a "wait" decision)
    oldest_wait_s: float = 0.0  # age of the oldest held request
    spilled_out_running: int = 0  # this tier's requests running on tighter tiers' servers
    spilled_in_running: int = 0  # looser tiers' requests running on this tier's servers
    arrivals: int = 0  # since the previous snapshot
    rejected: int = 0  # since the previous snapshot
    completed: int = 0  # since the previous snapshot (weights attainment when merging)
    attainment_percent: float | None = None
    predicted_attainment_percent: float | None = None


def merge_demand(parts: Iterable[TierDemand]) -> TierDemand:
    """One tier's demand over every router replica: counts add up, the oldest wait is the
    oldest anywhere, attainment is weighted by the completions each router saw."""
    items = list(parts)
    if not items:
        raise ValueError("merge_demand needs at least one part")
    name = items[0].tier
    if any(p.tier != name for p in items):
        raise ValueError("merge_demand: parts of different tiers")

    def weighted(values: list[tuple[float | None, int]]) -> float | None:
        known = [(v, max(w, 1)) for v, w in values if v is not None]
        if not known:
            return None
        return sum(v * w for v, w in known) / sum(w for _, w in known)

    return TierDemand(
        tier=name,
        waiting=sum(p.waiting for p in items),
        oldest_wait_s=max(p.oldest_wait_s for p in items),
        spilled_out_running=sum(p.spilled_out_running for p in items),
        spilled_in_running=sum(p.spilled_in_running for p in items),
        arrivals=sum(p.arrivals for p in items),
        rejected=sum(p.rejected for p in items),
        completed=sum(p.completed for p in items),
        attainment_percent=weighted([(p.attainment_percent, p.completed) for p in items]),
        predicted_attainment_percent=weighted([(p.predicted_attainment_percent, p.completed) for p in items]),
    )


@dataclass(frozen=True)
class ServerState:
    """One server (pod) of a tier, from the cluster and the engine's /metrics."""

    server_id: str
    tier: str
    ready: bool = True
    draining: bool = False
    standby: bool = False  # model loaded (asleep), out of rotation, promotable
    running: int = 0  # engine running + waiting requests
    queued: int = 0  # engine waiting requests (vllm:num_requests_waiting)
    kv_usage: float = 0.0  # vllm:kv_cache_usage_perc, 0..1
    started_s: float = 0.0  # when it was created (the newest goes first among equals)


@dataclass(frozen=True)
class TierDecision:
    tier: str
    current: int  # serving servers that exist and are not draining (starting included)
    ready: int  # of those, ready
    desired: int  # serving servers wanted
    standby_current: int
    standby_desired: int
    start: int = 0  # new serving servers to create (cold starts)
    promote: tuple[str, ...] = ()  # standby servers to move into rotation
    start_standby: int = 0  # new standby servers to create
    drain: tuple[str, ...] = ()  # serving servers to take out of rotation
    remove: tuple[str, ...] = ()  # drained (empty) servers to delete now
    remove_standby: tuple[str, ...] = ()  # surplus standbys to delete
    panic: bool = False
    scaled_to_zero: bool = False
    concurrency: float = 0.0  # the sample this decision took
    reason: str = ""

    @property
    def changed(self) -> bool:
        return bool(
            self.start or self.promote or self.start_standby or self.drain or self.remove or self.remove_standby
        )


@dataclass(frozen=True)
class FleetDecision:
    tiers: tuple[TierDecision, ...]
    free_gpus_left: int

    def tier(self, name: str) -> TierDecision:
        return next(d for d in self.tiers if d.tier == name)


def target_concurrency(
    model: LatencyModel,
    tpot_s: float,
    mean_prompt_tokens: int,
    mean_output_tokens: int,
    utilization: float = AutoscalerConfig.target_utilization,
) -> float:
    """Concurrency one server of a tier should carry: the largest batch B whose average
    iteration (decode at the KV of B half-finished sequences, plus the prefill tokens B
    sequences bring over their lifetime, spread over it) fits the tier's TPOT and whose
    KV fits the cache, times ``utilization`` (headroom for bursts inside a window)."""
    if tpot_s <= 0 or mean_output_tokens < 1 or mean_prompt_tokens < 0:
        raise ValueError("tpot_s > 0, mean_output_tokens >= 1, mean_prompt_tokens >= 0 required")
    per_seq_kv = mean_prompt_tokens + mean_output_tokens
    best = 1
    for b in range(1, model.max_num_seqs + 1):
        if b * per_seq_kv > model.kv_capacity_tokens:
            break
        kv = b * (mean_prompt_tokens + mean_output_tokens // 2)
        prefill = min(model.max_num_batched_tokens - b, round(b * mean_prompt_tokens / mean_output_tokens))
        if prefill < 0:
            break
        if model.iteration_s(b, kv, max(0, prefill)) > tpot_s:
            break
        best = b
    return max(1.0, best * utilization)


def pod_deletion_costs(servers: Sequence[ServerState]) -> dict[str, int]:
    """``controller.kubernetes.io/pod-deletion-cost`` per serving server of one tier: the
    router's load order (more running, more KV = costlier to lose); a draining server costs
    the least, so when the ReplicaSet shrinks by one it deletes exactly the drained one."""
    order = sorted(
        servers,
        key=lambda s: (not s.draining, s.running, s.kv_usage, -s.started_s, s.server_id),
    )
    return {s.server_id: (-1000 if s.draining else i) for i, s in enumerate(order)}


@dataclass
class _TierState:
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    panic_since: float | None = None  # last time the panic condition held
    last_pressure_s: float = -math.inf  # last wait/reject/saturation seen
    below_since: float | None = None  # stable desire below current since
    idle_since: float | None = None  # concurrency zero since
    standby_surplus_since: float | None = None
    learned_target: float | None = None  # per-server concurrency the routers' pressure showed
    learned_at: float = 0.0
    last_reason: str = ""


class TierAutoscaler:
    """The autoscaler of one ModelService: per-tier windows plus the fleet-wide GPU budget."""

    def __init__(self, tiers: Sequence[TierScaling], config: AutoscalerConfig | None = None) -> None:
        if not tiers:
            raise ValueError("the autoscaler needs at least one tier")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique: {names}")
        self.config = config or AutoscalerConfig()
        self.tiers: dict[str, TierScaling] = {t.name: t for t in tiers}
        self._state: dict[str, _TierState] = {t.name: _TierState() for t in tiers}

    def update_tiers(self, tiers: Sequence[TierScaling]) -> None:
        """A spec change: new bounds, same windows for tiers that stay."""
        self.tiers = {t.name: t for t in tiers}
        self._state = {t.name: self._state.get(t.name, _TierState()) for t in tiers}

    def last_reason(self, tier: str) -> str:
        return self._state[tier].last_reason

    # ------------------------------------------------------------------ decision

    def decide(
        self,
        now: float,
        demand: Mapping[str, TierDemand],
        servers: Sequence[ServerState],
        free_gpus: int,
        keep_alive_s: Mapping[str, float] | None = None,
        standby: Mapping[str, int] | None = None,
        warm_floor: Mapping[str, int] | None = None,
    ) -> FleetDecision:
        """One control step. ``keep_alive_s`` and ``standby`` override the spec per tier
        and ``warm_floor`` holds a tier at that many serving servers (the pre-warm policy's
        choices); ``free_gpus`` bounds new servers fleet-wide."""
        if free_gpus < 0:
            raise ValueError("free_gpus must be >= 0")
        by_tier: dict[str, list[ServerState]] = {n: [] for n in self.tiers}
        for s in servers:
            if s.tier in by_tier:
                by_tier[s.tier].append(s)
        order = sorted(self.tiers.values(), key=lambda t: (-t.priority, t.tpot_s, t.name))
        plans: dict[str, TierDecision] = {}
        gpus = free_gpus
        for t in order:
            dm = demand.get(t.name, TierDemand(tier=t.name))
            d = self._decide_tier(now, t, dm, by_tier[t.name], keep_alive_s, warm_floor)
            d, gpus = self._fit_gpus(t, d, gpus)
            plans[t.name] = d
        for t in order:  # standbys only from what serving left over
            want = (standby or {}).get(t.name, t.standby)
            plans[t.name], gpus = self._plan_standby(now, t, plans[t.name], by_tier[t.name], want, gpus)
        for t in order:
            self._state[t.name].last_reason = plans[t.name].reason
        return FleetDecision(tiers=tuple(plans[t.name] for t in self.tiers.values()), free_gpus_left=gpus)

    def _decide_tier(
        self,
        now: float,
        t: TierScaling,
        dm: TierDemand,
        servers: list[ServerState],
        keep_alive_override: Mapping[str, float] | None,
        warm_floor: Mapping[str, int] | None,
    ) -> TierDecision:
        cfg = self.config
        st = self._state[t.name]
        serving = [s for s in servers if not s.standby and not s.draining]
        draining = [s for s in servers if not s.standby and s.draining]
        standbys = [s for s in servers if s.standby]
        ready = [s for s in serving if s.ready]
        current = len(serving)
        own_running = sum(s.running for s in serving) - dm.spilled_in_running
        conc = float(max(0, own_running) + dm.waiting + dm.spilled_out_running)

        # windows
        st.samples.append((now, conc))
        while st.samples and st.samples[0][0] <= now - cfg.stable_window_s:
            st.samples.popleft()
        stable = sum(v for _, v in st.samples) / len(st.samples)
        recent = [v for ts, v in st.samples if ts > now - cfg.panic_window_s]
        panic_avg = sum(recent) / len(recent) if recent else conc
        target = self._target(now, t, st, conc, len(ready), dm)
        want_stable = math.ceil(stable / target - 1e-9)
        want_panic = math.ceil(panic_avg / target - 1e-9)

        saturated = bool(ready) and all(
            s.kv_usage >= cfg.kv_saturation or s.queued >= cfg.queue_saturation for s in ready
        )
        held_long = dm.waiting > 0 and dm.oldest_wait_s >= cfg.wait_fraction_of_ttft * t.ttft_s
        pressure = dm.rejected > 0 or held_long or saturated
        if pressure:
            st.last_pressure_s = now
        if conc > 0:
            st.idle_since = None
        elif st.idle_since is None:
            st.idle_since = now

        # panic: demand over the short window at 200% of what the ready servers target
        capacity = max(len(ready), 1) * target

        if panic_avg / capacity >= cfg.panic_threshold and want_panic > len(ready):
            st.panic_since = now
        panic = st.panic_since is not None and now - st.panic_since < cfg.stable_window_s
        if not panic:
            st.panic_since = None

        reasons: list[str] = []
        if panic:
            desired = max(current, want_panic)
            reasons.append(
                f"panic: {panic_avg:.1f} concurrent over {cfg.panic_window_s:g}s >= "
                f"{cfg.panic_threshold * 100:.0f}% of {len(ready)} ready x {target:.1f}"
            )
        else:
            desired = want_stable
            reasons.append(f"stable: {stable:.1f} concurrent over {cfg.stable_window_s:g}s / {target:.1f} per server")

        # scale out before attainment drops (one step, not while a start is in flight)
        early: list[str] = []
        pred = dm.predicted_attainment_percent
        if pred is not None and pred < t.attainment_target_percent + cfg.attainment_margin_percent:
            early.append(f"predicted attainment {pred:.1f}% near target {t.attainment_target_percent:g}%")
        if held_long:
            early.append(f"{dm.waiting} held, oldest {dm.oldest_wait_s:.2f}s of TTFT {t.ttft_s:g}s")
        if dm.rejected:
            early.append(f"{dm.rejected} rejected")
        if saturated:
            early.append(f"all {len(ready)} ready servers saturated (KV/queue)")
        if early and cfg.early_scale_out:
            step_to = len(ready) + 1 if len(ready) == current else current
            if step_to > desired:
                desired = step_to
                reasons.append("scale out early: " + "; ".join(early))

        # scale from zero: a request is held or arrived for an empty tier
        if current == 0 and (dm.waiting > 0 or dm.arrivals > 0 or conc > 0):
            desired = max(desired, 1, want_panic)
            reasons.append(f"scale from zero: {dm.waiting} held, {dm.arrivals} arrived")

        # bounds and scale-to-zero
        keep_alive = (keep_alive_override or {}).get(t.name, t.keep_alive_s)
        floor = max(t.min_replicas, t.on_demand_floor)
        to_zero = (
            t.scale_to_zero
            and t.min_replicas == 0
            and st.idle_since is not None
            and now - st.idle_since >= keep_alive
            and dm.waiting == 0
            and all(s.running == 0 for s in serving)
        )
        warm = (warm_floor or {}).get(t.name, 0)
        if to_zero and warm == 0:
            floor = 0
            desired = 0
        elif warm > floor:
            floor = warm
            if current < warm:
                reasons.append("pre-warm: idle-time histogram expects a request soon")
            to_zero = False
        elif floor == 0 and (current > 0 or desired > 0):
            floor = 1  # serving until idle for the keep-alive
        if desired < floor:
            reasons.append(f"floor {floor} (min {t.min_replicas}, on-demand floor {t.on_demand_floor})")
        if desired > t.max_replicas:
            reasons.append(f"capped at max {t.max_replicas}")
        desired = min(max(desired, floor), t.max_replicas)
        if to_zero and current > 0:
            reasons.append(f"idle {now - (st.idle_since or now):.0f}s >= keep-alive {keep_alive:g}s: scale to zero")

        # scale-in hysteresis
        drain: tuple[str, ...] = ()
        if desired < current:
            if st.below_since is None:
                st.below_since = now
            quiet_s = cfg.stable_window_s if cfg.scale_in_quiet_s is None else cfg.scale_in_quiet_s
            quiet = now - st.last_pressure_s >= quiet_s
            waited = now - st.below_since >= cfg.scale_in_delay_s
            busy_draining = draining and cfg.scale_in_step != 0
            if not to_zero and (panic or not quiet or not waited or busy_draining):
                why = (
                    "panic"
                    if panic
                    else "pressure within the stable window"
                    if not quiet
                    else "a server is still draining"
                    if busy_draining
                    else f"below for {now - st.below_since:.0f}s < {cfg.scale_in_delay_s:g}s"
                )
                reasons.append(f"hold {current} (scale-in deferred: {why})")
                desired = current
            else:
                n_in = (
                    current - desired
                    if to_zero or cfg.scale_in_step == 0
                    else min(cfg.scale_in_step, current - desired)
                )
                victims = sorted(serving, key=lambda s: (s.running, s.kv_usage, -s.started_s, s.server_id))[:n_in]
                drain = tuple(v.server_id for v in victims)
                desired = current - n_in
                # the next scale-in waits a whole delay again (a drained pod can vanish at
                # once; seen in e2e: 3 -> 2 -> 1 within 4 s without this)
                st.below_since = now
                reasons.append(
                    "scale in: drain least-loaded " + ", ".join(f"{v.server_id} (running {v.running})" for v in victims)
                )
        else:
            st.below_since = None

        remove = tuple(s.server_id for s in draining if s.running == 0)
        if remove:
            reasons.append(f"remove drained {', '.join(remove)}")
        grow = max(0, desired - current)
        promotable = [s for s in standbys if s.ready]
        promote = tuple(s.server_id for s in sorted(promotable, key=lambda s: s.started_s)[:grow])
        if promote:
            reasons.append(f"promote standby {', '.join(promote)}")
        return TierDecision(
            tier=t.name,
            current=current,
            ready=len(ready),
            desired=desired,
            standby_current=len(standbys),
            standby_desired=len(standbys),
            start=grow - len(promote),
            promote=promote,
            drain=drain,
            remove=remove,
            panic=panic,
            scaled_to_zero=desired == 0,
            concurrency=conc,
            reason="; ".join(reasons),
        )

    def _target(self, now: float, t: TierScaling, st: _TierState, conc: float, ready: int, dm: TierDemand) -> float:
        """The per-server target: the latency model's, lowered to what the routers showed.
        When requests are rejected or held long while ``ready`` servers carry ``conc``, a
        server saturates near conc/ready whatever the model said (long prompts, spills,
        an optimistic profile); the target becomes that times the target utilisation and
        relaxes back toward the model's by ``target_relax`` per stable window without
        pressure. Without this, a too-high target scales in, meets rejections, scales out
        again and pays a cold start each round (seen in the fleet simulator)."""
        cfg = self.config
        held_long = dm.waiting > 0 and dm.oldest_wait_s >= cfg.wait_fraction_of_ttft * t.ttft_s
        if (dm.rejected > 0 or held_long) and ready > 0 and conc > 0:
            seen = max(1.0, conc / ready * cfg.target_utilization)
            if st.learned_target is None or seen < st.learned_target:
                st.learned_target = min(seen, t.target_per_server)
            st.learned_at = now
        elif st.learned_target is not None and now - st.learned_at >= cfg.stable_window_s:
            st.learned_target += (t.target_per_server - st.learned_target) * cfg.target_relax
            st.learned_at = now
            if t.target_per_server - st.learned_target < 0.5:
                st.learned_target = None
        return st.learned_target if st.learned_target is not None else t.target_per_server

    def _fit_gpus(self, t: TierScaling, d: TierDecision, gpus: int) -> tuple[TierDecision, int]:
        if d.start == 0 or t.gpus_per_replica == 0:
            return d, gpus
        fits = min(d.start, gpus // t.gpus_per_replica)
        if fits == d.start:
            return d, gpus - fits * t.gpus_per_replica
        cut = d.start - fits
        reason = d.reason + f"; {cut} start(s) wait for free GPUs ({gpus} free, {t.gpus_per_replica} per replica)"
        return replace(d, start=fits, desired=d.desired - cut, reason=reason), gpus - fits * t.gpus_per_replica

    def _plan_standby(
        self, now: float, t: TierScaling, d: TierDecision, servers: list[ServerState], want: int, gpus: int
    ) -> tuple[TierDecision, int]:
        st = self._state[t.name]
        standbys = [s for s in servers if s.standby]
        left = len(standbys) - len(d.promote)
        room = max(0, t.max_replicas - d.desired)  # standbys count against max, so a promotion fits
        want = max(0, min(want, room)) if d.desired > 0 or t.standby > 0 else 0
        if left <= want:
            st.standby_surplus_since = None
        if left < want:
            per = t.gpus_per_replica
            n = want - left if per == 0 else min(want - left, gpus // per)
            gpus -= n * per
            reason = d.reason + (f"; start {n} standby (want {want})" if n else "")
            return replace(d, start_standby=n, standby_desired=left + n, reason=reason), gpus
        if left > want:
            if st.standby_surplus_since is None:
                st.standby_surplus_since = now
            if now - st.standby_surplus_since < self.config.standby_release_s:
                return replace(d, standby_desired=left), gpus
            spare = [s for s in standbys if s.server_id not in d.promote]
            spare.sort(key=lambda s: (s.ready, s.started_s))  # not-yet-ready, then oldest first
            gone = tuple(s.server_id for s in spare[: left - want])
            reason = d.reason + f"; remove {len(gone)} surplus standby (want {want})"
            return replace(d, remove_standby=gone, standby_desired=want, reason=reason), gpus
        return replace(d, standby_desired=want), gpus
