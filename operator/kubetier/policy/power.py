"""POLCA power capping for one power domain: pure decisions, no I/O, clock as a parameter.

A power domain (rack, row) has a budget. LLM inference rarely draws peak power on every
GPU at once (POLCA, Patel et al., ASPLOS 2024: ~30% more servers in the same budget with
minimal loss), so a domain may host more servers than ``budget / TDP`` as long as a
controller caps work when the draw gets close to the budget:

* above the **cap threshold** cap the least important servers first: one *cap group*
  more per ``escalate_every_s`` (long enough for the previous cap to show in the
  telemetry: telemetry delay + actuation latency), never the most protected group;
* above the **hard threshold** cap every server to the brake level at once (POLCA's
  power brake; counted as a *brake event*);
* below the **uncap threshold** for ``lift_after_s`` lift one group (the most protected
  first), then wait again: the gap between the thresholds and the hold time are the
  hysteresis that keeps caps from flapping.

Cap groups order the servers by tier: lowest ``priority`` first; among equal
priorities the loosest TPOT target first, so the tightest tiers are capped last.

Fail-safe: a server whose telemetry is missing or older than ``stale_after_s`` counts
at its maximum power (its TDP), so a dead agent can only make the controller cap more.

The same functions drive the live PowerBudget controller and the fleet simulator.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

GroupKey = tuple[int, float]  # (tier priority, -tier TPOT ms): ascending = capped first

Level = Literal["normal", "capping", "braking"]


@dataclass(frozen=True)
class ServerReading:
    """What the controller knows about one GPU server (engine) of the domain."""

    server: str
    tier: str
    tier_priority: int
    tier_tpot_ms: float
    max_watts: float
    """The server's maximum draw (TDP of its GPUs): what it counts for when its telemetry is stale."""
    watts: float | None = None
    """Latest measured draw; None when the server never reported."""
    measured_at: float | None = None
    """Clock time of ``watts`` (same clock as ``now``)."""
    cap_watts: float | None = None
    """The cap the agent reports as applied (None: uncapped)."""


@dataclass(frozen=True)
class PowerPolicyConfig:
    budget_watts: float
    cap_threshold: float = 0.90
    uncap_threshold: float = 0.80
    hard_threshold: float = 0.97
    cap_fraction: float = 0.60
    """A capped server's cap as a share of its maximum. 0.6 of 700 W = 420 W: above the
    H100/H200 decode draw of small and medium batches (137-300 W measured on H200 decode,
    303-515 W up to batch 64 in the shipped H100 profile), so a cap mostly slows prefill."""
    brake_fraction: float = 0.45
    """Every server's cap while braking: deep enough to pull a domain back from the hard limit."""
    stale_after_s: float = 10.0
    escalate_every_s: float = 2.0
    lift_after_s: float = 30.0
    uniform: bool = False
    """Baseline for comparison: every server is in one group, capped alike."""
    trend_lookahead_s: float = 0.0
    """Judge the cap threshold on the draw projected this far ahead along its rising
    trend (the change since the previous tick, never a falling one), so group caps land
    before a ramp does rather than one telemetry-plus-actuation delay after it.
    0: the latest reading alone. Lifting always uses the latest reading."""
    trend_brakes: bool = False
    """Judge the hard threshold (the brake) on the projected draw too."""

    def __post_init__(self) -> None:
        if self.budget_watts <= 0:
            raise ValueError(f"budget_watts must be > 0, got {self.budget_watts}")
        if not (0 <= self.uncap_threshold < self.cap_threshold <= self.hard_threshold):
            raise ValueError(
                "thresholds must satisfy 0 <= uncap_threshold < cap_threshold <= hard_threshold, got "
                f"{self.uncap_threshold}, {self.cap_threshold}, {self.hard_threshold}"
            )
        for name in ("cap_fraction", "brake_fraction"):
            v = getattr(self, name)
            if not (0 < v <= 1):
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        if self.brake_fraction > self.cap_fraction:
            raise ValueError("brake_fraction must not exceed cap_fraction (the brake is the deeper cap)")
        for name in ("stale_after_s", "escalate_every_s", "lift_after_s", "trend_lookahead_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True)
class PowerState:
    """What the policy remembers between ticks (the controller persists it)."""

    capped_groups: int = 0
    braking: bool = False
    changed_at: float | None = None
    below_uncap_since: float | None = None
    brake_events: int = 0
    last_watts: float | None = None
    """Domain draw at the previous tick (for the trend)."""
    last_at: float | None = None


@dataclass(frozen=True)
class PowerDecision:
    state: PowerState
    level: Level
    domain_watts: float
    """Sum of the servers' power, stale ones at their maximum."""
    caps: dict[str, float | None]
    """Server -> cap in watts (None: run uncapped). Every server of the snapshot is listed."""
    stale: tuple[str, ...]
    groups: tuple[GroupKey, ...]
    """Cap groups, first capped first."""
    reason: str


def group_key(r: ServerReading, uniform: bool = False) -> GroupKey:
    if uniform:
        return (0, 0.0)
    return (r.tier_priority, -float(r.tier_tpot_ms))


def cap_order(readings: Iterable[ServerReading], uniform: bool = False) -> tuple[GroupKey, ...]:
    """The cap groups present, the one to cap first first (lowest priority, then loosest TPOT)."""
    return tuple(sorted({group_key(r, uniform) for r in readings}))


def is_stale(r: ServerReading, now: float, stale_after_s: float) -> bool:
    return r.watts is None or r.measured_at is None or now - r.measured_at > stale_after_s


def domain_watts(readings: Iterable[ServerReading], now: float, stale_after_s: float) -> tuple[float, tuple[str, ...]]:
    """Domain draw with stale servers at their maximum (fail-safe), and the stale servers."""
    total = 0.0
    stale: list[str] = []
    for r in readings:
        if is_stale(r, now, stale_after_s):
            stale.append(r.server)
            total += r.max_watts
        else:
            assert r.watts is not None
            total += r.watts
    return total, tuple(stale)


def _max_groups_below_hard(n_groups: int) -> int:
    # Under the cap threshold alone the most protected group keeps running uncapped;
    # a domain with one group (one tier, or the uniform baseline) caps that group.
    return n_groups - 1 if n_groups > 1 else n_groups


def decide(
    readings: Sequence[ServerReading], state: PowerState, config: PowerPolicyConfig, now: float
) -> PowerDecision:
    """One control tick: the caps every server of the domain should run with."""
    groups = cap_order(readings, config.uniform)
    watts, stale = domain_watts(readings, now, config.stale_after_s)
    share = watts / config.budget_watts
    rising = 0.0
    if config.trend_lookahead_s > 0 and state.last_watts is not None and state.last_at is not None:
        dt = now - state.last_at
        if dt > 0:
            rising = max(0.0, (watts - state.last_watts) / dt) * config.trend_lookahead_s
    # The thresholds that add caps see the projected draw; lifting sees the latest one.
    ahead = (watts + rising) / config.budget_watts
    n = len(groups)
    limit = _max_groups_below_hard(n)
    capped = min(state.capped_groups, limit)
    braking = state.braking
    changed_at = state.changed_at
    below_since = state.below_uncap_since
    brake_events = state.brake_events
    reason: str

    def settled(hold: float) -> bool:
        return changed_at is None or now - changed_at >= hold

    trend = f" (rising to {ahead:.1%} within {config.trend_lookahead_s:g} s)" if ahead > share else ""
    if (ahead if config.trend_brakes else share) > config.hard_threshold:
        below_since = None
        if not braking:
            braking = True
            brake_events += 1
            changed_at = now
            reason = f"domain at {share:.1%} of budget{trend}, above the hard threshold: brake, cap every server"
        else:
            reason = f"domain at {share:.1%} of budget, still above the hard threshold: braking"
        # Once the brake releases, the group caps must already hold the domain.
        capped = limit
    elif ahead > config.cap_threshold:
        below_since = None
        if braking:
            reason = f"domain at {share:.1%}{trend}, above the cap threshold: keep braking"
        elif capped < limit and settled(config.escalate_every_s):
            capped += 1
            changed_at = now
            reason = f"domain at {share:.1%}{trend}, above the cap threshold: cap group {capped} of {n}"
        else:
            reason = f"domain at {share:.1%}, above the cap threshold: waiting for caps to take effect"
    else:
        if braking:
            braking = False
            changed_at = now
            reason = f"domain at {share:.1%}, below the cap threshold: brake released, group caps stay"
        elif share < config.uncap_threshold:
            if below_since is None:
                below_since = now
            if capped > 0 and now - below_since >= config.lift_after_s and settled(config.lift_after_s):
                capped -= 1
                changed_at = now
                below_since = now
                reason = f"domain at {share:.1%}, below the uncap threshold long enough: lift group {capped + 1}"
            else:
                reason = f"domain at {share:.1%}, below the uncap threshold" + (", holding caps" if capped else "")
        else:
            below_since = None
            reason = f"domain at {share:.1%}, between thresholds: hold"

    capped_keys = set(groups[:capped])
    caps: dict[str, float | None] = {}
    for r in readings:
        if braking:
            caps[r.server] = r.max_watts * config.brake_fraction
        elif group_key(r, config.uniform) in capped_keys:
            caps[r.server] = r.max_watts * config.cap_fraction
        else:
            caps[r.server] = None
    level: Level = "braking" if braking else ("capping" if capped else "normal")
    new_state = PowerState(
        capped_groups=capped,
        braking=braking,
        changed_at=changed_at,
        below_uncap_since=below_since,
        brake_events=brake_events,
        last_watts=watts,
        last_at=now,
    )
    return PowerDecision(
        state=new_state, level=level, domain_watts=watts, caps=caps, stale=stale, groups=groups, reason=reason
    )


# --------------------------------------------------------------------------- accounting


@dataclass
class ThresholdClock:
    """Seconds the domain spent above each threshold (and above the budget itself)."""

    above_cap_s: float = 0.0
    above_hard_s: float = 0.0
    above_budget_s: float = 0.0
    _last: tuple[float, float] | None = field(default=None, repr=False)

    def observe(self, now: float, watts: float, config: PowerPolicyConfig) -> None:
        """Account the interval since the previous observation at the previous draw."""
        if self._last is not None:
            t0, w0 = self._last
            dt = max(0.0, now - t0)
            share = w0 / config.budget_watts
            if share > config.cap_threshold:
                self.above_cap_s += dt
            if share > config.hard_threshold:
                self.above_hard_s += dt
            if share > 1.0:
                self.above_budget_s += dt
        self._last = (now, watts)


class PowerWindow:
    """Domain power samples over a sliding window, for the p99 the oversubscription rule reads."""

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, watts: float) -> None:
        self._samples.append((now, watts))
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()

    def __len__(self) -> int:
        return len(self._samples)

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile (``q`` in [0, 1]) of the samples in the window; None when empty."""
        if not self._samples:
            return None
        ordered = sorted(w for _, w in self._samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- oversubscription


def nominal_servers(budget_watts: float, server_max_watts: float) -> int:
    """Servers the budget holds if every one drew its maximum at once (no oversubscription)."""
    if server_max_watts <= 0:
        raise ValueError(f"server_max_watts must be > 0, got {server_max_watts}")
    return math.floor(budget_watts / server_max_watts + 1e-9)


def servers_allowed(
    budget_watts: float,
    server_max_watts: float,
    ratio: float,
    servers_now: int,
    p99_domain_watts: float | None,
    cap_threshold: float,
) -> int:
    """How many GPU servers the domain may host.

    At most ``budget / TDP * ratio`` (the ratio is set on the PowerBudget). Beyond the
    nominal count the decision is judged on the *measured* p99 domain power: the p99
    per-server draw (p99 domain power over the servers there now) must fit that many
    servers under the cap threshold. With no measurement yet (or no servers), nothing
    beyond the nominal count is allowed.
    """
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    nominal = nominal_servers(budget_watts, server_max_watts)
    ceiling = math.floor(budget_watts / server_max_watts * ratio + 1e-9)
    if p99_domain_watts is None or servers_now <= 0:
        return nominal
    per_server = p99_domain_watts / servers_now
    if per_server <= 0:
        return ceiling
    by_power = math.floor(cap_threshold * budget_watts / per_server + 1e-9)
    return max(nominal, min(ceiling, by_power))
