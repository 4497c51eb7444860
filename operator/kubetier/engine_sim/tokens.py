"""Token counting and generated text for the engine simulator (no tokenizer, on purpose).

Prompt length: a request may state it exactly with the extra body field
``prompt_tokens`` (an int; benchmarks and the router's tests use it). Otherwise:

- token-id prompts (``"prompt": [1, 2, 3]``) count one token per id;
- text counts ``ceil(len(text) / 4)`` — the usual ~4 characters per token of English
  BPE vocabularies (OpenAI's rule of thumb; Llama 3's 128k vocabulary averages close
  to it). It costs one ``len()``, where splitting into words would walk the text;
- a chat adds ``CHAT_TOKENS_PER_MESSAGE`` per message for the template's role headers
  (Llama 3's template spends 4-5 tokens per message).

Output length: ``max_tokens`` when given (the simulator never stops early, as with
``ignore_eos``); otherwise drawn from a log-normal distribution (seeded) whose mean is
``OutputLengthSampler.mean``, since real answers stop at EOS at varied lengths.

Generated text: cheap deterministic filler words, each one token, each starting with a
space so that streamed pieces concatenate into readable text. JSON-safe ASCII, so the
per-token path can splice pre-encoded bytes into a chunk template.
"""

from __future__ import annotations

import math
import random

CHAT_TOKENS_PER_MESSAGE = 4
CHARS_PER_TOKEN = 4

FILLER_WORDS: tuple[str, ...] = tuple(
    " " + w
    for w in [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "seven",
        "bright",
        "lanterns",
        "glow",
        "across",
        "quiet",
        "harbour",
        "streets",
        "and",
        "every",
        "careful",
        "reader",
        "counts",
        "tokens",
        "slowly",
        "under",
        "the",
        "amber",
        "evening",
        "sky",
        "as",
        "distant",
        "engines",
        "hum",
        "in",
        "steady",
        "batches",
        "of",
        "small",
        "predictable",
        "words",
        "that",
        "mean",
        "nothing",
        "at",
        "all",
        "but",
        "stream",
        "very",
        "quickly",
    ]
)
FILLER_BYTES: tuple[bytes, ...] = tuple(w.encode("ascii") for w in FILLER_WORDS)


def text_tokens(text: str) -> int:
    """Estimated tokens of a text: ceil(chars / 4), at least 1 for non-empty text."""
    return -(-len(text) // CHARS_PER_TOKEN)


def filler_text(offset: int, count: int) -> str:
    """The text of ``count`` generated tokens starting at word ``offset`` (deterministic)."""
    n = len(FILLER_WORDS)
    return "".join(FILLER_WORDS[(offset + i) % n] for i in range(count))


class OutputLengthSampler:
    """Output lengths for requests without ``max_tokens``: log-normal, mean ``mean``."""

    def __init__(self, mean: float = 256.0, sigma: float = 0.8, rng: random.Random | None = None) -> None:
        if mean < 1:
            raise ValueError(f"mean output tokens must be >= 1, got {mean}")
        self.mean = mean
        self.sigma = sigma
        # E[lognormal] = exp(mu + sigma^2/2)
        self._mu = math.log(mean) - sigma * sigma / 2
        self._rng = rng or random.Random(0)

    def sample(self, limit: int) -> int:
        """One length in [1, limit]."""
        n = int(round(self._rng.lognormvariate(self._mu, self.sigma)))
        return max(1, min(n, limit))
