"""The published measurements the built-in profiles are held to, and how far each is off.

Each :class:`PublishedPoint` is one figure someone else measured on a real engine
(vLLM release, GPU, model and workload named in its source), the way to compute the
same figure from a derived profile, and a relative tolerance. Closed-loop sweeps
(``vllm bench serve --max-concurrency C``, InferenceBench) are compared through
:func:`kubetier.policy.closed_loop.predict_closed_loop`, the same steady-state
prediction the engine simulator's fidelity benchmark uses, so the prefill iterations
interleaved with the decodes and the request overhead are part of the comparison.

Points marked ``fitted`` set a constant of the derivation (so they hold by
construction, within rounding); ``checked`` points were not fitted and test the model;
``not asserted`` points are shown with the reason they cannot test the engine.
``tests/policy/test_profile_calibration.py`` asserts every fitted and checked point,
and that the first derivation (:data:`profile_derivation.LEGACY_CALIBRATIONS`) misses
some of them. ``python -m kubetier.policy.profile_calibration`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from kubetier.policy.closed_loop import predict_closed_loop
from kubetier.policy.latency import LatencyModel
from kubetier.policy.profile_derivation import A100_40GB, SETUPS, Gpu, Setup, legacy_setup

Role = Literal["fitted", "checked", "not asserted"]


@lru_cache(maxsize=32)
def model_of(setup: Setup) -> LatencyModel:
    """The latency model of a derived profile (what a built-in profile file holds)."""
    return LatencyModel.from_dict(setup.profile())


def _tpot_ms(concurrency: int, prompt: int, output: int) -> Callable[[Setup], float]:
    return lambda s: predict_closed_loop(model_of(s), concurrency, prompt, output).tpot_s * 1e3


def _ttft_ms(concurrency: int, prompt: int, output: int) -> Callable[[Setup], float]:
    return lambda s: predict_closed_loop(model_of(s), concurrency, prompt, output).ttft_s * 1e3


def _throughput_gain(concurrency: int, prompt: int, output: int) -> Callable[[Setup], float]:
    """Requests/s at ``concurrency`` streams over requests/s of one stream."""

    def gain(s: Setup) -> float:
        one = predict_closed_loop(model_of(s), 1, prompt, output)
        many = predict_closed_loop(model_of(s), concurrency, prompt, output)
        return (concurrency / many.cycle_s) / (1 / one.cycle_s)

    return gain


def _ms_per_token_with_prefill(prompt: int, output: int) -> Callable[[Setup], float]:
    """One request alone: (time to first token + the other decode steps) / output tokens."""

    def per_token(s: Setup) -> float:
        m = model_of(s)
        total = m.first_token_s(prompt) + (output - 1) * m.decode_iteration_s(1, prompt + output // 2)
        return total / output * 1e3

    return per_token


def _linear_growth(tokens: int) -> Callable[[Setup], float]:
    """Linear-layer time at ``tokens`` rows over that at one row (a kernel-level figure)."""
    return lambda s: s.linear_s(tokens) / s.linear_s(1)


@dataclass(frozen=True)
class PublishedPoint:
    profile: str  # the SETUPS entry it calibrates
    what: str
    published: float
    unit: str
    tolerance: float  # relative; the test asserts |derived / published - 1| <= tolerance
    role: Role
    source: str
    derive: Callable[[Setup], float]
    gpu: Gpu | None = None  # measured on a sibling part (same model, other memory size)
    why_not: str = ""  # for "not asserted" points

    def setup(self, legacy: bool = False) -> Setup:
        s = legacy_setup(self.profile) if legacy else SETUPS[self.profile]
        return replace(s, gpu=self.gpu) if self.gpu is not None else s

    def derived(self, legacy: bool = False) -> float:
        return self.derive(self.setup(legacy))

    def error(self, legacy: bool = False) -> float:
        return self.derived(legacy) / self.published - 1.0

    def holds(self, legacy: bool = False) -> bool:
        return abs(self.error(legacy)) <= self.tolerance


_IB = "InferenceBench chatbot-short, vLLM 0.21.0, 1 x H100-80GB-HBM3, ~45 in / 128 out"
_MUSGRAVE = "Musgrave, vLLM 0.23.0, A100 40GB, 1024 in / 128 out"
_HARNESS = "throughput flat from 16 to 64 streams (1,384 -> 1,312 tok/s): the harness's ceiling, not the engine's"

H100_8B, H100_70B, A100_8B = "llama-3.1-8b-h100", "llama-3.1-70b-h100-tp4", "llama-3.1-8b-a100"


def _vidur(
    profile: str, what: str, tokens: int, t1_ms: float, tn_ms: float, tol: float, role: Role, src: str
) -> PublishedPoint:
    """A kernel-level point: Vidur's measured linear-layer time at ``tokens`` rows over
    that at one row (``mlp.csv``, ms per layer)."""
    return PublishedPoint(
        profile, f"{what}, {tokens} tokens / 1 token", tn_ms / t1_ms, "x", tol, role, src, _linear_growth(tokens)
    )


_VIDUR_H100_7B = "Vidur h100 Llama-2-7b mlp.csv (kernel times)"
_VIDUR_H100_70B = "Vidur h100 Llama-2-70b mlp.csv TP4 (kernel times)"
_VIDUR_A100_8B = "Vidur a100 Meta-Llama-3-8B mlp.csv (kernel times)"

PUBLISHED_POINTS: tuple[PublishedPoint, ...] = (
    PublishedPoint(H100_8B, "TPOT p50, 1 stream", 6.48, "ms", 0.05, "fitted", _IB, _tpot_ms(1, 45, 128)),
    PublishedPoint(H100_8B, "TPOT p50, 4 streams", 6.59, "ms", 0.05, "fitted", _IB, _tpot_ms(4, 45, 128)),
    PublishedPoint(H100_8B, "TTFT p50, 1 stream", 13.98, "ms", 0.05, "fitted", _IB, _ttft_ms(1, 45, 128)),
    PublishedPoint(H100_8B, "TTFT p50, 4 streams", 22.75, "ms", 0.30, "checked", _IB, _ttft_ms(4, 45, 128)),
    PublishedPoint(
        H100_8B, "TPOT p50, 16 streams", 10.94, "ms", 0, "not asserted", _IB, _tpot_ms(16, 45, 128), None, _HARNESS
    ),
    PublishedPoint(
        H100_8B, "TPOT p50, 64 streams", 46.91, "ms", 0, "not asserted", _IB, _tpot_ms(64, 45, 128), None, _HARNESS
    ),
    _vidur(H100_8B, "linear layers", 128, 0.175, 0.199, 0.05, "fitted", _VIDUR_H100_7B),
    _vidur(H100_70B, "linear layers TP4", 128, 0.179, 0.199, 0.05, "fitted", _VIDUR_H100_70B),
    _vidur(H100_70B, "linear layers TP4", 256, 0.179, 0.240, 0.10, "checked", _VIDUR_H100_70B),
    PublishedPoint(
        H100_70B,
        "ms per output token, batch 1, 2035 in / 300 out",
        1000 / 53.9,
        "ms",
        0.05,
        "fitted",
        "Mazurek & Gabriel via clune.org, 4 x H100",
        _ms_per_token_with_prefill(2035, 300),
    ),
    PublishedPoint(
        A100_8B, "TPOT, 1 stream", 1000 / 75, "ms", 0.05, "fitted", _MUSGRAVE, _tpot_ms(1, 1024, 128), A100_40GB
    ),
    PublishedPoint(
        A100_8B,
        "throughput, 8 streams / 1 stream",
        6.6,
        "x",
        0.15,
        "checked",
        _MUSGRAVE,
        _throughput_gain(8, 1024, 128),
        A100_40GB,
    ),
    _vidur(A100_8B, "linear layers", 128, 0.303, 0.412, 0.05, "fitted", _VIDUR_A100_8B),
    _vidur(A100_8B, "linear layers", 256, 0.303, 0.609, 0.15, "checked", _VIDUR_A100_8B),
    PublishedPoint(
        H100_8B, "decode power, batch 1", 300.0, "W", 0.05, "fitted", "ML.ENERGY v3.0", lambda s: s.decode_watts(1)
    ),
    PublishedPoint(
        H100_8B, "decode power, batch 128", 600.0, "W", 0.05, "fitted", "ML.ENERGY v3.0", lambda s: s.decode_watts(128)
    ),
)


def asserted_points() -> list[PublishedPoint]:
    return [p for p in PUBLISHED_POINTS if p.role != "not asserted"]


def table() -> list[dict[str, object]]:
    """One row per published point: the first derivation's figure, the current one, the
    published one, and the errors."""
    rows: list[dict[str, object]] = []
    for p in PUBLISHED_POINTS:
        old, new = p.derived(legacy=True), p.derived()
        rows.append(
            {
                "profile": p.profile + (f" ({p.gpu.product})" if p.gpu else ""),
                "what": p.what,
                "unit": p.unit,
                "published": round(p.published, 3),
                "old": round(old, 3),
                "new": round(new, 3),
                "oldErrorPct": round((old / p.published - 1) * 100, 1),
                "newErrorPct": round((new / p.published - 1) * 100, 1),
                "tolerancePct": round(p.tolerance * 100, 1) if p.role != "not asserted" else None,
                "role": p.role,
                "source": p.source,
                **({"whyNotAsserted": p.why_not} if p.why_not else {}),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kubetier.policy.profile_calibration",
        description="compare the built-in profiles (first and current derivation) with published measurements",
    )
    ap.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = ap.parse_args(argv)
    rows = table()
    if args.output == "json":
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'profile':<44} {'what':<44} {'published':>10} {'old':>9} {'err':>7} {'new':>9} {'err':>7}  role")
    for r in rows:
        print(
            f"{r['profile']!s:<44} {r['what']!s:<44} {r['published']!s:>10} {r['old']!s:>9} "
            f"{r['oldErrorPct']!s:>6}% {r['new']!s:>9} {r['newErrorPct']!s:>6}%  {r['role']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
