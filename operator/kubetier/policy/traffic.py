"""Per-tier traffic statistics the SLO policy learns online: prompt and output lengths.

Admission needs to know what a tier's requests look like: how many output tokens a new
request will hold its slot for (its horizon H), and how many prompt tokens a server will
have to prefill per iteration as its running sequences finish and are replaced (the
steady refill, mean prompt / mean output per running sequence). Both come from what
the router (or the simulator) sees: prompts at admission, output lengths at the end of
each request. Means are exponentially decayed (``half_life`` requests) so a shift in
traffic is followed within a few hundred requests; until ``warmup`` requests have been
seen the tier's configured ``meanOutputTokens`` (and ``prior_prompt_tokens``) are
blended in as the prior.

Values the policy uses are quantised to 1/8 octave (:func:`quantise`): they enter the
keys of the policy's memo tables, which must stay few, and a 9% step in a mean moves
admission far less than the noise of one burst.
"""

from __future__ import annotations

import math

__all__ = ["PRIOR_PROMPT_TOKENS", "TierTraffic", "quantise"]

# Prompt prior before a tier has seen traffic: about a thousand tokens, a typical chat
# prompt (the public Azure conversation trace averages 1,155, its code trace 2,048).
PRIOR_PROMPT_TOKENS = 1024


def quantise(x: float) -> tuple[int, float]:
    """(class, value): ``x`` rounded to the nearest of 8 steps per octave (x >= 1), or
    to a multiple of 1/8 below 1. Equal classes have equal values."""
    if x < 1.0:
        k = max(0, round(x * 8))
        return k, k / 8.0
    e = math.floor(math.log2(x))
    m = round(x / 2.0**e * 8)  # 8..16
    return 8 + e * 8 + (m - 8), m / 8.0 * 2.0**e


class TierTraffic:
    """Decayed mean prompt and output length of one tier."""

    __slots__ = (
        "_h_cache",
        "_r_cache",
        "half_life",
        "n_output",
        "n_prompt",
        "output_mean",
        "prior_output",
        "prior_prompt",
        "prompt_mean",
        "warmup",
    )

    def __init__(
        self,
        prior_output_tokens: int,
        prior_prompt_tokens: int = PRIOR_PROMPT_TOKENS,
        half_life: float = 500.0,
        warmup: float = 20.0,
    ) -> None:
        self.prior_output = float(max(1, prior_output_tokens))
        self.prior_prompt = float(max(0, prior_prompt_tokens))
        self.half_life = half_life
        self.warmup = warmup
        self.prompt_mean = self.prior_prompt
        self.output_mean = self.prior_output
        self.n_prompt = 0.0  # effective (decayed) observation counts
        self.n_output = 0.0
        self._h_cache: int | None = None
        self._r_cache: tuple[int, float] | None = None

    def observe_prompt(self, tokens: int) -> None:
        self.n_prompt = min(self.n_prompt + 1.0, self.half_life)
        self.prompt_mean += (tokens - self.prompt_mean) / self._weight(self.n_prompt)
        self._r_cache = None

    def observe_output(self, tokens: int) -> None:
        self.n_output = min(self.n_output + 1.0, self.half_life)
        self.output_mean += (max(1, tokens) - self.output_mean) / self._weight(self.n_output)
        self._h_cache = None
        self._r_cache = None

    def _weight(self, n: float) -> float:
        # 1/n averaging while n is small (prior included as `warmup` pseudo-observations),
        # then a fixed exponential decay with the given half-life
        return min(n + self.warmup, self.half_life / math.log(2.0))

    def horizon(self) -> int:
        """Expected output tokens of a new request (quantised, >= 1)."""
        h = self._h_cache
        if h is None:
            h = self._h_cache = max(1, int(quantise(self.output_mean)[1]))
        return h

    def refill(self) -> tuple[int, float]:
        """(class, prompt tokens per iteration per running sequence): mean prompt over
        mean output, quantised."""
        r = self._r_cache
        if r is None:
            r = self._r_cache = quantise(self.prompt_mean / max(1.0, self.output_mean))
        return r

    def probe_prompt(self) -> int:
        """A typical prompt of this tier (the mean, rounded up to 64 tokens)."""
        return int(-(-self.prompt_mean // 64) * 64)
