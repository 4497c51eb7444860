"""What a power cap does to a server: a capped server is a slower server.

A GPU held under a power cap lowers its SM clock until its draw fits (DVFS; with locked
SM clocks the same thing is set directly). Board power is the idle floor plus a dynamic
part that grows with the clock: ``P(f) = idle + (P_uncapped - idle) * (f / f0) ** k``.
Dynamic power is ``C V^2 f`` and the voltage rises with the clock across the DVFS range,
so ``k`` lies between 2 and 3; we take ``k = 2``, the conservative end (a cap costs
*more* time than the cubic law predicts). Iteration time is taken to scale with
``1 / f``, also conservative: memory-bound decode steps slow less than that.

So an iteration that would draw ``W`` uncapped runs under a cap ``C < W`` at
``((W - idle) / (C - idle)) ** (1 / k)`` times its uncapped duration, and draws ``C``.
Iterations already under the cap are untouched: on H200 decode draws 137-300 W of 700 W
(measured, arXiv 2605.11999), so a moderate cap mostly slows prefill, as POLCA observed
on A100s (prompt phase near TDP, token phase well below).

:func:`capped_model` turns this into an ordinary :class:`LatencyModel` (each decode grid
row and prefill point scaled by the slowdown at its own power), so the router's
feasibility check, the engine simulator and the fleet simulator all see a capped server
as a slower server, with no special case.
"""

from __future__ import annotations

from kubetier.policy.latency import LatencyModel

POWER_CLOCK_EXPONENT = 2.0


def cap_slowdown(
    uncapped_watts: float, cap_watts: float | None, idle_watts: float, exponent: float = POWER_CLOCK_EXPONENT
) -> float:
    """Factor (>= 1) by which a cap stretches an iteration that would draw ``uncapped_watts``."""
    if cap_watts is None or uncapped_watts <= cap_watts:
        return 1.0
    if cap_watts <= idle_watts:
        raise ValueError(f"a cap ({cap_watts:g} W) must be above the idle power ({idle_watts:g} W)")
    return float(((uncapped_watts - idle_watts) / (cap_watts - idle_watts)) ** (1.0 / exponent))


def capped_model(model: LatencyModel, cap_watts: float | None) -> LatencyModel:
    """``model`` as it behaves under a power cap of ``cap_watts`` per GPU server (None: itself).

    The result is a validated profile named ``<name>@cap<W>W``: decode rows scaled by the
    slowdown at that batch's power, prefill points by the slowdown at that chunk's power,
    power tables clamped to the cap. Cached per (model, cap), so callers may ask per tick.
    """
    if cap_watts is None or cap_watts >= model.tdp_watts:
        return model
    if cap_watts <= model.idle_watts:
        raise ValueError(f"a cap ({cap_watts:g} W) must be above the idle power ({model.idle_watts:g} W)")
    cap = round(float(cap_watts), 1)
    # Keyed by identity: LatencyModel equality compares the public fields only, so two
    # profiles with the same name but different grids would collide in an equality cache.
    key = (id(model), cap)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.clear()
    capped = _build_capped(model, cap)
    _CACHE[key] = (model, capped)
    return capped


_CACHE_LIMIT = 256
_CACHE: dict[tuple[int, float], tuple[LatencyModel, LatencyModel]] = {}


def _build_capped(model: LatencyModel, cap: float) -> LatencyModel:
    d = model.to_dict()
    idle = model.idle_watts

    def slow(watts: float) -> float:
        return cap_slowdown(watts, cap, idle)

    dec = d["decode"]
    dec["iterationMs"] = [
        [round(ms * slow(model.power_watts(int(b), 0)), 6) for ms in row]
        for b, row in zip(dec["batchSizes"], dec["iterationMs"])
    ]
    pre = d["prefill"]
    chunk = model.max_num_batched_tokens
    pre["ms"] = [
        round(ms * slow(model.power_watts(0, min(int(n), chunk))), 6) for n, ms in zip(pre["tokens"], pre["ms"])
    ]
    if pre.get("contextNsPerTokenPair"):
        # attention to earlier prompt chunks is compute-bound like a full chunk
        pre["contextNsPerTokenPair"] = round(pre["contextNsPerTokenPair"] * slow(model.power_watts(0, chunk)), 6)
    pw = d["power"]
    pw["decodeWatts"]["watts"] = [min(float(w), cap) for w in pw["decodeWatts"]["watts"]]
    pw["prefillWatts"] = min(float(pw["prefillWatts"]), cap)
    d["name"] = f"{model.name}@cap{cap:g}W"
    d["sources"] = [
        *d.get("sources", []),
        f"CAPPED at {cap:g} W by kubetier.policy.power_cap: iteration times scaled by "
        f"((W - idle) / (cap - idle)) ** (1/{POWER_CLOCK_EXPONENT:g}) where the uncapped draw W exceeds the cap",
    ]
    return LatencyModel.from_dict(d)
