"""A latency model that learns online: the profile is the prior, observations correct it.

Each (model, GPU) profile predicts iteration times; what the fleet actually does can
differ (another engine version, a power cap, a noisy neighbour, a profile derived
rather than measured). :class:`LatencyCorrection` learns one multiplicative correction
per latency model from observations ``(server, predicted seconds, observed seconds)``:
decode stretches and first tokens whose prediction the caller made with the profile.

Estimator (robust recursive least squares on the log residual):

* per server, ``r = log(observed / predicted)`` clipped to ``[-CLIP, CLIP]`` (one wild
  measurement moves nothing far), folded into an exponentially weighted mean with
  forgetting factor ``forget`` - recursive least squares of a constant with forgetting;
* per model, the correction is the **median** of its servers' estimates (servers with
  at least ``min_obs`` observations): one noisy or broken server cannot poison it;
* the result is clipped to ``[MIN_SCALE, MAX_SCALE]`` and quantised to 1/64 steps, and
  written to the model's shared iteration-cost memo (``IterationCosts.scale``), which
  is what the routing policy's checks multiply by. The policy's pre-filter memos are
  re-keyed when a scale changes (``RoutingPolicy.refresh_level_memos``).

Router and simulator use the corrected model through this one class: the simulator
feeds it the engine's iteration timings (what vLLM's ``vllm:`` iteration histograms
expose), the router the same from scrapes or its own per-token timing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from kubetier.policy.routing_costs import IterationCosts

if TYPE_CHECKING:
    from kubetier.policy.routing import RoutingPolicy

__all__ = ["CLIP", "MAX_SCALE", "MIN_SCALE", "LatencyCorrection"]

CLIP = math.log(2.0)  # one observation counts as at most 2x off
MIN_SCALE = 0.5
MAX_SCALE = 2.0
_STEP = 64  # quantisation: 1/64 steps keep the policy's memo keys few


class _ServerEstimate:
    __slots__ = ("costs", "n", "r")

    def __init__(self, costs: IterationCosts) -> None:
        self.costs = costs
        self.n = 0
        self.r = 0.0  # exponentially weighted mean log residual


class LatencyCorrection:
    """Learns ``IterationCosts.scale`` per latency model for one routing policy."""

    def __init__(self, policy: RoutingPolicy, *, forget: float = 0.98, min_obs: int = 5) -> None:
        if not 0.0 < forget < 1.0:
            raise ValueError(f"forget must be in (0, 1), got {forget!r}")
        self.policy = policy
        self.forget = forget
        self.min_obs = min_obs
        self._servers: dict[str, _ServerEstimate] = {}
        self.observations = 0
        self.abs_log_error_sum = 0.0  # sum of |log(scaled prediction / observed)|, for reports

    def observe(self, server_id: str, predicted_s: float, observed_s: float) -> None:
        """One timing of ``server_id``: the profile predicted ``predicted_s``, the
        engine took ``observed_s`` (both > 0; others are ignored)."""
        if not (predicted_s > 0.0 and observed_s > 0.0):
            return
        est = self._servers.get(server_id)
        if est is None:
            e = self.policy._servers.get(server_id)
            if e is None:
                return
            est = self._servers[server_id] = _ServerEstimate(e.costs)
        r = math.log(observed_s / predicted_s)
        self.abs_log_error_sum += abs(r - math.log(est.costs.scale))
        r = CLIP if r > CLIP else (-CLIP if r < -CLIP else r)
        est.n += 1
        # 1/n averaging at first (plain least squares), then forgetting
        w = max(1.0 - self.forget, 1.0 / est.n)
        est.r += w * (r - est.r)
        self.observations += 1
        # the median over servers is refreshed as a server qualifies and then every
        # 16th observation (bounded work at 1,000 servers)
        if est.n == self.min_obs or not self.observations & 15:
            self._update(est.costs)

    def forget_server(self, server_id: str) -> None:
        self._servers.pop(server_id, None)

    def reset(self) -> None:
        """Back to the profile (scale 1) for every model this policy serves."""
        for c in self.policy._costs.values():
            c.scale = 1.0
        self._servers.clear()
        self.policy.refresh_level_memos()

    def _update(self, costs: IterationCosts) -> None:
        rs = sorted(s.r for s in self._servers.values() if s.costs is costs and s.n >= self.min_obs)
        if not rs:
            return
        mid = len(rs) // 2
        med = rs[mid] if len(rs) % 2 else 0.5 * (rs[mid - 1] + rs[mid])
        scale = min(MAX_SCALE, max(MIN_SCALE, math.exp(med)))
        q = round(scale * _STEP) / _STEP
        if q != costs.scale:
            costs.scale = q
            self.policy.refresh_level_memos()
