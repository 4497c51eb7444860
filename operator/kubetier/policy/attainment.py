"""SLO attainment, defined once for the router, the operator and the fleet simulator.

A request of a tier with targets TTFT and TPOT *meets its tier* when it completed and
every token was on time: token ``i`` (counted from 0) is due by
``arrival + TTFT + i * TPOT`` (:func:`token_due_s`; slack from fast tokens absorbs a
slow one). Attainment is the share of *judged* requests that met their tier:

* completed requests are judged: met or missed by their deadlines;
* a request the router **refused** (429: shed load, queue full, too late to meet its
  TTFT) is judged and is a **miss**: otherwise a tier that sheds load would report
  100 % while turning clients away;
* a request that **failed** (5xx, an engine that broke mid-stream and could not be
  resumed) is judged and is a miss;
* a request the client **cancelled** (disconnected before the end) is not judged: no
  verdict can be given;
* an **invalid** request (a 4xx other than 429: the request itself was wrong) is not
  judged: it says nothing about the tier.

The router counts these per tier (``/kubetier/status``, ``kubetier_router_*`` metrics), the
operator turns the router's counts into ``status.tiers[].attainmentPercent`` with
:func:`attainment_percent`, and the fleet simulator summarises its runs with the same
function, so the three can be compared number for number.
"""

from __future__ import annotations

from enum import Enum

# Below this many judged requests a tier's attainment is noise, not a measurement: the
# operator reports no attainment (and no SLOAtRisk from it) until a tier has this many.
MIN_JUDGED_REQUESTS = 5


class Outcome(Enum):
    COMPLETED = "completed"
    REFUSED = "refused"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INVALID = "invalid"


JUDGED = frozenset({Outcome.COMPLETED, Outcome.REFUSED, Outcome.FAILED})


def token_due_s(arrival_s: float, ttft_s: float, tpot_s: float, index: int) -> float:
    """When token ``index`` (0 = the first token) is due."""
    return arrival_s + ttft_s + index * tpot_s


def is_judged(outcome: Outcome) -> bool:
    """Whether a request with this outcome counts toward its tier's attainment."""
    return outcome in JUDGED


def met_tier(outcome: Outcome, on_time: bool) -> bool:
    """Whether a request met its tier: it completed and every token was on time
    (``on_time`` is ignored for any other outcome: a refused or failed request missed)."""
    return outcome is Outcome.COMPLETED and on_time


def judged_requests(completed: int, refused: int, failed: int) -> int:
    """How many requests attainment is computed over."""
    return completed + refused + failed


def attainment_percent(met: int, completed: int, refused: int, failed: int) -> float | None:
    """Percent of judged requests that met their tier; None before any was judged.

    ``met`` counts completed requests that were on time (``met <= completed``)."""
    if met < 0 or completed < 0 or refused < 0 or failed < 0:
        raise ValueError(f"counts must be >= 0, got met={met} completed={completed} refused={refused} failed={failed}")
    if met > completed:
        raise ValueError(f"met ({met}) cannot exceed completed ({completed})")
    judged = judged_requests(completed, refused, failed)
    if judged == 0:
        return None
    return 100.0 * met / judged
