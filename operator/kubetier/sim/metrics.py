"""Per-request outcomes in compact arrays, and the summaries the literature reports.

Two attainment definitions are computed for every tier:

* **deadline** (per token): token k is due at ``arrival + TTFT + (k-1) * TPOT``; a
  request attains its SLO when every token is on time (the simulator checks this
  exactly). A slow iteration can be absorbed by slack from earlier fast ones.
* **ttft+tpot**: the simpler DistServe-style form, TTFT <= target and mean TPOT (time
  after the first token divided by the remaining tokens) <= target.

Rejected requests count as misses in both: attainment is defined once, in
``kubetier.policy.attainment`` (the router and the operator use the same function). Storage is 4-byte floats and 1-byte flags per
request (10 M requests ~ 120 MB), not Python objects.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np

from kubetier.policy.attainment import attainment_percent


class Collector:
    """The simulator's outcome sink: one row per completed or rejected request.

    Rows land in a small list of tuples (one append per request: this is on the hot
    path) and are moved into typed arrays every ``_FLUSH`` rows, so memory stays at
    ~16 bytes per request however long the run.
    """

    _FLUSH = 1 << 15

    def __init__(self, n_tiers: int, miss_budget: list[int] | None = None) -> None:
        """``miss_budget``: per tier, the most misses that still meet the target; once a
        tier exceeds it the run's verdict is settled and ``settled`` turns True."""
        self.n_tiers = n_tiers
        self.miss_budget = miss_budget
        self.misses = [0] * n_tiers
        self.settled = False
        self.on_settled = None
        self._buf: list[tuple] = []
        self._cols = (array("b"), array("f"), array("f"), array("b"), array("b"), array("b"), array("f"))

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
        buf = self._buf
        buf.append((tier, ttft_s, tpot_s, deadline_ok, rejected, spilled, queue_s))
        if len(buf) >= self._FLUSH:
            self._flush()
        if not deadline_ok and self.miss_budget is not None:
            self.misses[tier] += 1
            if self.misses[tier] > self.miss_budget[tier] and not self.settled:
                self.settled = True
                if self.on_settled is not None:
                    self.on_settled()

    def _flush(self) -> None:
        if self._buf:
            for col, values in zip(self._cols, zip(*self._buf)):
                col.extend(values)
            self._buf.clear()

    def _col(self, i: int) -> array:
        self._flush()
        return self._cols[i]

    tier = property(lambda self: self._col(0))
    ttft = property(lambda self: self._col(1))
    tpot = property(lambda self: self._col(2))
    ok = property(lambda self: self._col(3))
    rejected = property(lambda self: self._col(4))
    spilled = property(lambda self: self._col(5))
    queue = property(lambda self: self._col(6))

    def __len__(self) -> int:
        return len(self._cols[0]) + len(self._buf)


@dataclass
class TierStats:
    name: str
    requests: int
    rejected: int
    spilled: int
    attainment_deadline: float  # percent
    attainment_ttft_tpot: float  # percent
    target_percent: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p90_ms: float
    tpot_p99_ms: float
    queue_p50_ms: float
    queue_p99_ms: float

    @property
    def meets_target(self) -> bool:
        return self.requests == 0 or self.attainment_deadline >= self.target_percent


def _pct(values: np.ndarray, q: float) -> float:
    if values.size == 0:
        return float("nan")
    return float(np.percentile(values, q)) * 1000.0


def _percent(met: int, completed: int, refused: int) -> float:
    # A tier that received no request is reported at 100 % (nothing was missed), as before.
    pct = attainment_percent(met, completed, refused, failed=0)
    return 100.0 if pct is None else pct


def summarize(
    col: Collector, names: list[str], ttft_ms: list[float], tpot_ms: list[float], targets: list[float]
) -> list[TierStats]:
    tier = np.frombuffer(col.tier, dtype=np.int8) if len(col) else np.zeros(0, np.int8)
    ttft = np.frombuffer(col.ttft, dtype=np.float32) if len(col) else np.zeros(0, np.float32)
    tpot = np.frombuffer(col.tpot, dtype=np.float32) if len(col) else np.zeros(0, np.float32)
    ok = np.frombuffer(col.ok, dtype=np.int8) if len(col) else np.zeros(0, np.int8)
    rej = np.frombuffer(col.rejected, dtype=np.int8) if len(col) else np.zeros(0, np.int8)
    spl = np.frombuffer(col.spilled, dtype=np.int8) if len(col) else np.zeros(0, np.int8)
    que = np.frombuffer(col.queue, dtype=np.float32) if len(col) else np.zeros(0, np.float32)
    out = []
    for i, name in enumerate(names):
        m = tier == i
        n = int(m.sum())
        served = m & (rej == 0)
        refused = int((m & (rej == 1)).sum())
        completed = n - refused
        t1, t2 = ttft[served], tpot[served]
        simple = served & (ttft <= ttft_ms[i] / 1000.0 + 1e-6) & (tpot <= tpot_ms[i] / 1000.0 + 1e-6)
        out.append(
            TierStats(
                name=name,
                requests=n,
                rejected=refused,
                spilled=int((m & (spl == 1)).sum()),
                attainment_deadline=_percent(int((served & (ok == 1)).sum()), completed, refused),
                attainment_ttft_tpot=_percent(int(simple.sum()), completed, refused),
                target_percent=targets[i],
                ttft_p50_ms=_pct(t1, 50),
                ttft_p90_ms=_pct(t1, 90),
                ttft_p99_ms=_pct(t1, 99),
                tpot_p50_ms=_pct(t2, 50),
                tpot_p90_ms=_pct(t2, 90),
                tpot_p99_ms=_pct(t2, 99),
                queue_p50_ms=_pct(que[served], 50),
                queue_p99_ms=_pct(que[served], 99),
            )
        )
    return out
