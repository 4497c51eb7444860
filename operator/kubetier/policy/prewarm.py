"""Pre-warm and keep-alive: when to load a tier's model before traffic and how long to
keep an idle tier's servers.

The hybrid histogram policy of Shahrad et al., "Serverless in the Wild" (USENIX ATC
2020), applied per ModelService tier instead of per function:

* Each tier keeps a histogram of its **idle times**: the gap between the moment its last
  request finished (concurrency fell to zero) and the next arrival. Bins of one minute
  over a four-hour range, as in the paper. Gaps under ``min_idle_s`` (30 s) are pauses
  inside a busy period and are not recorded (an unload for less than a load never pays).
* When the histogram is **representative** (enough idle periods, few beyond the range,
  and bin counts concentrated: coefficient of variation >= 2, the paper's test), the
  **pre-warm window** is the 5th percentile of the idle time minus a 10% margin and the
  **keep-alive window** the 99th percentile plus 10%. After an idle period starts, the
  tier may unload at once when the pre-warm window is long enough to be worth it
  (longer than a model load), and is loaded again ``prewarm window - load time`` later,
  so the server is ready when the next request is likely; it then stays up until the
  keep-alive window ends.
* Otherwise it **falls back to a fixed keep-alive** (the tier's ``keepAliveSeconds``),
  no pre-warm. (The paper falls back to ARIMA for apps whose idle times exceed the
  range; a tier idle for hours gains little from a forecast here, so it is not used.)

For **busy tiers** (they are rarely idle, so the histogram says nothing) a short-horizon
rate forecast (Holt's linear exponential smoothing of the concurrency averaged over the
stable window, fed once per window) looks one model load ahead: the standby count covers the forecast growth beyond what the serving servers
target, so a ramp meets servers that are already loaded.

Pure: callers pass ``now`` and observations; no I/O, no randomness.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "HoltForecaster",
    "IdleHistogram",
    "PrewarmConfig",
    "PrewarmDecision",
    "TierPrewarmer",
]


@dataclass(frozen=True)
class PrewarmConfig:
    bin_s: float = 60.0  # the paper's one-minute bins
    range_s: float = 4 * 3600.0  # the paper's four-hour range
    head_percentile: float = 5.0
    tail_percentile: float = 99.0
    margin: float = 0.10  # 10% margin on both windows (the paper's)
    min_samples: int = 5  # fewer idle periods than this: not representative (a judgement)
    # Gaps shorter than this are pauses inside one busy period, not idle periods: unloading
    # for less than a model load takes (14-48 s for an 8B model on vLLM) can never pay,
    # and counting them would pin the 5th percentile to zero for any bursty tier.
    min_idle_s: float = 30.0
    min_cv: float = 2.0  # the paper's representativeness threshold on bin counts
    # Fewer idle periods than min_samples still predict when they are this regular: at
    # least ``regular_samples``, none beyond the range, all (from three on: all but the
    # shortest) within ``regular_span_bins`` adjacent bins (periodic jobs: the simulator's
    # batch tier, 13.5 +- 1 min gaps). Waiting for five such periods cost a cold start
    # per job in the fleet simulator.
    regular_samples: int = 2
    regular_span_bins: int = 3
    max_out_of_range: float = 0.5  # share of idle times beyond the range tolerated
    holt_alpha: float = 0.5  # level smoothing of the concurrency forecast
    # The forecast is fed the concurrency averaged over this window (the autoscaler's
    # stable window), once per window, not each sample: a burst shorter than a model load
    # is over before a standby could serve it, and following each sample kept standbys
    # loading and idle (fleet simulator, bursty Gamma CV 4: 58 promotions and 1.25x the
    # idle GPU-seconds of a fixed keep-alive over 2 h). A ramp moves the averages and
    # still gets standbys one load ahead.
    forecast_window_s: float = 60.0
    holt_beta: float = 0.3  # trend smoothing

    def __post_init__(self) -> None:
        if self.bin_s <= 0 or self.range_s < self.bin_s:
            raise ValueError("need bin_s > 0 and range_s >= bin_s")
        if not 0 <= self.head_percentile < self.tail_percentile <= 100:
            raise ValueError("need 0 <= head_percentile < tail_percentile <= 100")
        if not 0 < self.holt_alpha <= 1 or not 0 <= self.holt_beta <= 1:
            raise ValueError("holt_alpha in (0, 1], holt_beta in [0, 1]")


class IdleHistogram:
    """Idle times of one tier in fixed bins, plus the count beyond the range."""

    def __init__(self, config: PrewarmConfig) -> None:
        self.config = config
        self.bins = [0] * math.ceil(config.range_s / config.bin_s)
        self.out_of_range = 0

    @property
    def count(self) -> int:
        return sum(self.bins) + self.out_of_range

    def add(self, idle_s: float) -> None:
        if idle_s < 0:
            raise ValueError("idle time must be >= 0")
        i = int(idle_s // self.config.bin_s)
        if i >= len(self.bins):
            self.out_of_range += 1
        else:
            self.bins[i] += 1

    def percentile_s(self, p: float) -> float:
        """Upper edge of the bin holding the p-th percentile (in range only)."""
        total = sum(self.bins)
        if total == 0:
            raise ValueError("empty histogram")
        need = p / 100.0 * total
        acc = 0
        for i, c in enumerate(self.bins):
            acc += c
            if acc >= need and c:
                return (i + 1) * self.config.bin_s if p > 50 else i * self.config.bin_s
        return len(self.bins) * self.config.bin_s

    def representative(self) -> tuple[bool, str]:
        cfg = self.config
        n = self.count
        if cfg.regular_samples <= n < cfg.min_samples and self.out_of_range == 0:
            seen = [i for i, c in enumerate(self.bins) for _ in range(c)]
            # one shorter outlier is tolerated once there are three: it only moves the
            # pre-warm earlier (safer), never the keep-alive tail
            rest = seen[1:] if n >= 3 else seen
            if rest[-1] - rest[0] < cfg.regular_span_bins:
                return True, f"{n} idle periods, {len(rest)} within {rest[-1] - rest[0] + 1} bins (regular)"
        if n < cfg.min_samples:
            return False, f"{n} idle periods < {cfg.min_samples}"
        if self.out_of_range / n > cfg.max_out_of_range:
            return False, f"{self.out_of_range}/{n} idle periods beyond {cfg.range_s:g}s"
        mean = sum(self.bins) / len(self.bins)
        var = sum((c - mean) ** 2 for c in self.bins) / len(self.bins)
        cv = math.sqrt(var) / mean if mean > 0 else 0.0
        if cv < cfg.min_cv:
            return False, f"idle times spread out (bin CV {cv:.2f} < {cfg.min_cv:g})"
        return True, f"{n} idle periods, bin CV {cv:.2f}"


class HoltForecaster:
    """Holt's linear exponential smoothing of an irregularly sampled signal (per second)."""

    def __init__(self, alpha: float, beta: float) -> None:
        self.alpha = alpha
        self.beta = beta
        self.level: float | None = None
        self.trend = 0.0  # per second
        self._t = 0.0

    def observe(self, now: float, value: float) -> None:
        if self.level is None:
            self.level, self._t = value, now
            return
        dt = now - self._t
        if dt <= 0:
            self.level = value if self.level is None else self.level
            return
        prev = self.level
        pred = prev + self.trend * dt
        self.level = self.alpha * value + (1 - self.alpha) * pred
        self.trend = self.beta * (self.level - prev) / dt + (1 - self.beta) * self.trend
        self._t = now

    def forecast(self, horizon_s: float) -> float:
        if self.level is None:
            return 0.0
        return max(0.0, self.level + self.trend * max(0.0, horizon_s))


@dataclass(frozen=True)
class PrewarmDecision:
    tier: str
    keep_alive_s: float  # idle time (since concurrency fell to zero) before scale-to-zero
    warm_floor: int  # serving servers to hold now (1 inside the pre-warm window, else 0)
    standby: int  # standby servers wanted now
    forecast_concurrency: float
    mode: str  # "histogram", "fixed", "forecast"
    reason: str


@dataclass
class _Tier:
    hist: IdleHistogram
    holt: HoltForecaster
    idle_since: float | None = None
    busy: bool = False
    window: deque[tuple[float, float]] = field(default_factory=deque)
    window_sum: float = 0.0
    fed_at: float | None = None  # last time the forecast was fed a window average


class TierPrewarmer:
    """Per-tier idle histograms and forecasts for one ModelService."""

    def __init__(self, tiers: list[str], config: PrewarmConfig | None = None) -> None:
        self.config = config or PrewarmConfig()
        self._tiers: dict[str, _Tier] = {
            t: _Tier(IdleHistogram(self.config), HoltForecaster(self.config.holt_alpha, self.config.holt_beta))
            for t in tiers
        }

    def histogram(self, tier: str) -> IdleHistogram:
        return self._tiers[tier].hist

    def observe(self, now: float, tier: str, concurrency: float, arrivals: int) -> None:
        """One sample: the tier's concurrency now and the arrivals since the last sample.
        An idle period ends at the first arrival after concurrency fell to zero."""
        st = self._tiers[tier]
        st.window.append((now, concurrency))
        st.window_sum += concurrency
        while st.window and st.window[0][0] <= now - self.config.forecast_window_s:
            st.window_sum -= st.window.popleft()[1]
        if st.fed_at is None or now - st.fed_at >= self.config.forecast_window_s:
            st.holt.observe(now, max(0.0, st.window_sum / len(st.window)))
            st.fed_at = now
        if arrivals > 0 or concurrency > 0:
            if st.idle_since is not None:
                if now - st.idle_since >= self.config.min_idle_s:
                    st.hist.add(now - st.idle_since)
                st.idle_since = None
            st.busy = True
        elif st.busy or st.idle_since is None:
            st.busy = False
            if st.idle_since is None:
                st.idle_since = now

    def idle_for_s(self, now: float, tier: str) -> float:
        s = self._tiers[tier].idle_since
        return 0.0 if s is None else now - s

    def decide(
        self,
        now: float,
        tier: str,
        fixed_keep_alive_s: float,
        load_s: float,
        target_per_server: float,
        serving: int,
        spec_standby: int,
        max_standby: int,
    ) -> PrewarmDecision:
        """Keep-alive, pre-warm time and standby count for ``tier`` now.

        ``load_s`` is the expected time from creating a server to serving (model load);
        ``spec_standby`` the spec's standby count (a floor); ``max_standby`` what the
        replica bound leaves."""
        cfg = self.config
        st = self._tiers[tier]
        fc = st.holt.forecast(load_s)
        need = math.ceil(fc / target_per_server - 1e-9) if target_per_server > 0 else 0
        # Only a serving tier grows into standbys; a tier at zero scales from zero on demand.
        extra = max(0, need - serving) if serving > 0 else 0
        standby = max(0, min(max(spec_standby, extra), max_standby))
        ok, why = st.hist.representative()
        if not ok:
            mode = "forecast" if extra > 0 else "fixed"
            return PrewarmDecision(
                tier=tier,
                keep_alive_s=fixed_keep_alive_s,
                warm_floor=0,
                standby=standby,
                forecast_concurrency=fc,
                mode=mode,
                reason=f"fixed keep-alive {fixed_keep_alive_s:g}s ({why}); forecast {fc:.1f} concurrent "
                f"in {load_s:g}s -> standby {standby}",
            )
        head = st.hist.percentile_s(cfg.head_percentile) * (1 - cfg.margin)
        tail = st.hist.percentile_s(cfg.tail_percentile) * (1 + cfg.margin)
        # Unloading pays only when the server would sit idle longer than a reload takes:
        # then the tier goes to zero at once and is loaded again just before the head of
        # the idle-time distribution, and kept until its tail.
        idle = self.idle_for_s(now, tier)
        unload = head > load_s
        # Kept loaded (no long idle predicted): at least the spec's keep-alive. The tail of
        # a handful of short idle periods is their maximum; the next longer one was a cold
        # start the fixed keep-alive would not have had (Azure trace, fleet simulator).
        keep_alive, warm = (tail if unload else max(tail, fixed_keep_alive_s)), 0
        phase = "keep loaded"
        if unload and st.idle_since is not None:
            if idle < head - load_s:
                keep_alive, phase = 0.0, f"unloaded, pre-warm at idle+{head - load_s:.0f}s"
            elif idle < tail:
                warm, phase = 1, f"pre-warmed until idle+{tail:.0f}s"
            else:
                phase = "past the keep-alive window"
        return PrewarmDecision(
            tier=tier,
            keep_alive_s=keep_alive,
            warm_floor=warm,
            standby=standby,
            forecast_concurrency=fc,
            mode="histogram",
            reason=f"histogram ({why}): pre-warm window {head:.0f}s, keep-alive window {tail:.0f}s; {phase}",
        )
