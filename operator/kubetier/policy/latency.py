"""The latency model: how long one engine iteration takes, and what it draws.

Every part of kubetier that predicts latency (router, operator, fleet simulator,
engine simulator) asks this module, so they all agree. A *profile* (YAML, format in
docs/contracts.md, validated by its one pydantic definition
``kubetier.api.profile.LatencyProfile``) holds profiled points; :class:`LatencyModel`
interpolates them.

Semantics (all times in seconds, returned as floats):

``decode_iteration_s(batch, kv_tokens)``
    One iteration in which ``batch`` sequences each produce one token while the batch
    holds ``kv_tokens`` tokens of KV cache in total. Bilinear interpolation over the
    grid ``decode.batchSizes`` x ``decode.kvTokens``. Outside the grid:

    * ``batch == 0`` -> 0.0 (no decode work); negative arguments -> ValueError.
    * ``batch`` above the last grid size, or ``kv_tokens`` above the last grid KV,
      extrapolate *linearly* from the last grid cell. Decode time grows linearly with
      KV tokens (each is read once per step) and, once compute-bound, with batch, so a
      straight line is the physically right continuation; because validation demands
      non-decreasing rows and columns the extrapolation never decreases.
    * The grid must start at batch 1 and KV 0, so there is nothing below it.

``iteration_s(decode_batch, kv_tokens, prefill_tokens, context_pairs=0)``
    One chunked-prefill iteration (Sarathi-Serve): the decode tokens of the running
    batch plus up to ``max_num_batched_tokens - decode_batch`` prompt tokens share a
    single forward pass. With ``P(n)`` the prefill table (an iteration carrying ``n``
    prompt tokens and no decode), ``D(b, k)`` the decode table and ``a`` the profile's
    ``prefill.contextNsPerTokenPair``::

        P(0) := D(1, 0)        (an iteration that reads the weights once)
        iteration_s(b, k, 0) = D(b, k)
        iteration_s(0, k, n, x) = P(n) + a * x
        iteration_s(b, k, n, x) = D(b, k) + P(n) - P(0) + a * x

    i.e. the prompt chunk adds its cost beyond the one weight read that the decode
    part already pays. Small chunks ride almost free on a memory-bound decode step;
    large chunks add their compute. ``P`` interpolates piecewise-linearly from the
    anchor ``(0, D(1, 0))`` through ``prefill.tokens``/``prefill.ms`` and extrapolates
    linearly past the last point. ``P(n)`` holds the attention of the chunk's tokens to
    each other; ``x`` (``context_pairs``) is the sum over the iteration's chunks of
    ``chunk tokens x prompt tokens prefilled before the chunk``: causal attention to the
    earlier chunks costs ``4 * hidden * layers`` FLOPs per such pair, which is the
    dominant cost of the last chunks of a long prompt (a 32k prompt in 2k chunks of
    Llama-3.1-8B spends two thirds as much on it as on the chunks themselves).

``prefill_s(prompt_tokens)``
    The prompt alone on an idle server, split into ``max_num_batched_tokens`` chunks
    ``c_1 .. c_m``: ``sum P(c_i) + a * c_i * (c_1 + .. + c_{i-1})``. This is exactly
    the sum of the ``iteration_s(0, ., c_i, x_i)`` calls an engine makes.

``first_token_s(prompt_tokens)``
    Time to first token on an idle server as a client sees it:
    ``requestOverheadMs + prefill_s(prompt_tokens)``. The per-request overhead (HTTP,
    chat template, tokenization, hand-off to the engine loop, detokenizing the first
    token) runs outside the engine iterations, so it delays a request's admission and
    never an iteration.

``power_watts(decode_batch, prefill_tokens)``
    Board power during such an iteration: ``idleWatts`` with no work; decode power
    interpolated over ``power.decodeWatts`` (clamped at its ends); a prompt chunk
    raises power toward ``prefillWatts`` in proportion to the chunk's share of the
    token budget; the larger of the two, never above ``tdpWatts``.

Hot paths (``decode_iteration_s``, ``iteration_s``) are called per simulated iteration
by the fleet simulator, so the grids are precomputed into tuples and looked up with
``bisect``; no allocation per call.
"""

from __future__ import annotations

import bisect as _bisect
import os
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Final

import yaml
from pydantic import ValidationError

from kubetier.api.errors import describe
from kubetier.api.profile import LatencyProfile

DEFAULT_PROFILE = "llama-3.1-8b-h100"
# Final: the compiled simulator calls it from a C static, not a module-dict lookup per call
bisect_right: Final = _bisect.bisect_right


class ProfileError(ValueError):
    """A latency profile is malformed or out of range; the message names the field."""


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class LatencyModel:
    name: str
    kv_capacity_tokens: int
    max_num_seqs: int
    max_num_batched_tokens: int
    idle_watts: float
    tdp_watts: float
    model: str = ""
    gpu_product: str = ""
    gpu_count: int = 1
    sources: tuple[str, ...] = ()
    engine: str = ""  # "vllm 0.21.0"; empty when the profile does not say
    request_overhead_s: float = 0.0
    context_s_per_pair: float = 0.0
    # Precomputed grids (seconds / watts); private, compared by the public fields only.
    _d_batch: tuple[float, ...] = field(default=(), repr=False, compare=False)
    _d_kv: tuple[float, ...] = field(default=(), repr=False, compare=False)
    _d_s: tuple[tuple[float, ...], ...] = field(default=(), repr=False, compare=False)
    _p_tokens: tuple[float, ...] = field(default=(), repr=False, compare=False)
    _p_s: tuple[float, ...] = field(default=(), repr=False, compare=False)
    _w_batch: tuple[float, ...] = field(default=(), repr=False, compare=False)
    _w_watts: tuple[float, ...] = field(default=(), repr=False, compare=False)
    _prefill_watts: float = field(default=0.0, repr=False, compare=False)
    _raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyModel:
        """Validate a profile (contract shape, camelCase keys) and build the model."""
        if not isinstance(d, dict):
            raise ProfileError(f"profile: must be a mapping, got {type(d).__name__}")
        try:
            profile = LatencyProfile.model_validate(d)
        except ValidationError as exc:
            raise ProfileError("; ".join(describe(exc))) from None
        return cls.from_api(profile, raw=d)

    @classmethod
    def from_api(cls, profile: LatencyProfile, raw: dict[str, Any] | None = None) -> LatencyModel:
        """The model of an already validated profile (``raw``: the document it came from,
        kept for ``to_dict``; default: the profile's wire form)."""
        dec, pre, pw = profile.decode, profile.prefill, profile.power
        grid = dec.iteration_ms
        return cls(
            name=profile.name,
            kv_capacity_tokens=profile.kv_capacity_tokens,
            max_num_seqs=profile.max_num_seqs,
            max_num_batched_tokens=profile.max_num_batched_tokens,
            idle_watts=float(pw.idle_watts),
            tdp_watts=float(pw.tdp_watts),
            model=profile.model or "",
            gpu_product=profile.gpu.product if profile.gpu else "",
            gpu_count=profile.gpu.count if profile.gpu else 1,
            sources=tuple(profile.sources),
            engine=f"{profile.engine.name} {profile.engine.version}" if profile.engine else "",
            request_overhead_s=profile.request_overhead_ms / 1000.0,
            context_s_per_pair=pre.context_ns_per_token_pair * 1e-9,
            _d_batch=tuple(float(b) for b in dec.batch_sizes),
            _d_kv=tuple(float(k) for k in dec.kv_tokens),
            _d_s=tuple(tuple(v / 1000.0 for v in row) for row in grid),
            # The prefill table is anchored at (0 tokens, one batch-1 decode step).
            _p_tokens=(0.0,) + tuple(float(t) for t in pre.tokens),
            _p_s=(grid[0][0] / 1000.0,) + tuple(v / 1000.0 for v in pre.ms),
            _w_batch=tuple(float(b) for b in pw.decode_watts.batch_sizes),
            _w_watts=tuple(float(w) for w in pw.decode_watts.watts),
            _prefill_watts=float(pw.prefill_watts),
            _raw=_plain_copy(raw if raw is not None else profile.wire()),
        )

    def to_api(self) -> LatencyProfile:
        """The validated profile as the API model."""
        return LatencyProfile.model_validate(self._raw)

    def to_dict(self) -> dict[str, Any]:
        """The validated profile in its contract shape (a deep copy)."""
        copy: dict[str, Any] = _plain_copy(self._raw)
        return copy

    # ------------------------------------------------------------------ hot paths

    def decode_iteration_s(self, batch: float, kv_tokens: float) -> float:
        if batch < 1 or kv_tokens < 0:
            if batch == 0 and kv_tokens >= 0:
                return 0.0
            raise ValueError(f"batch ({batch}) and kv_tokens ({kv_tokens}) must be >= 0")
        bs, ks, g = self._d_batch, self._d_kv, self._d_s
        i = bisect_right(bs, batch) - 1
        if i > len(bs) - 2:
            i = len(bs) - 2
        j = bisect_right(ks, kv_tokens) - 1
        if j > len(ks) - 2:
            j = len(ks) - 2
        b0 = bs[i]
        k0 = ks[j]
        u = (batch - b0) / (bs[i + 1] - b0)
        v = (kv_tokens - k0) / (ks[j + 1] - k0)
        r0 = g[i]
        r1 = g[i + 1]
        lo = r0[j] + (r0[j + 1] - r0[j]) * v
        hi = r1[j] + (r1[j + 1] - r1[j]) * v
        return lo + (hi - lo) * u

    def prefill_nondecreasing(self) -> bool:
        """Whether a prompt chunk never costs less than a shorter one (the prefill table
        is non-decreasing, so its interpolation and extrapolation are too)."""
        ps = self._p_s
        return all(a <= b for a, b in zip(ps, ps[1:], strict=False))

    def _prefill_iteration_s(self, tokens: float) -> float:
        ts, ps = self._p_tokens, self._p_s
        i = bisect_right(ts, tokens) - 1
        if i > len(ts) - 2:
            i = len(ts) - 2
        t0 = ts[i]
        return ps[i] + (ps[i + 1] - ps[i]) * (tokens - t0) / (ts[i + 1] - t0)

    def iteration_s(
        self, decode_batch: float, kv_tokens: float, prefill_tokens: float, context_pairs: float = 0
    ) -> float:
        if prefill_tokens <= 0:
            if prefill_tokens < 0:
                raise ValueError(f"prefill_tokens ({prefill_tokens}) must be >= 0")
            return self.decode_iteration_s(decode_batch, kv_tokens)
        if decode_batch + prefill_tokens > self.max_num_batched_tokens:
            raise ValueError(
                f"decode_batch ({decode_batch}) + prefill_tokens ({prefill_tokens}) exceeds "
                f"max_num_batched_tokens ({self.max_num_batched_tokens})"
            )
        p = self._prefill_iteration_s(prefill_tokens)
        if context_pairs:
            if context_pairs < 0:
                raise ValueError(f"context_pairs ({context_pairs}) must be >= 0")
            p += self.context_s_per_pair * context_pairs
        if decode_batch == 0:
            return p
        return self.decode_iteration_s(decode_batch, kv_tokens) + p - self._p_s[0]

    def prefill_s(self, prompt_tokens: int) -> float:
        if prompt_tokens <= 0:
            if prompt_tokens < 0:
                raise ValueError(f"prompt_tokens ({prompt_tokens}) must be >= 0")
            return 0.0
        C = self.max_num_batched_tokens
        q, r = divmod(prompt_tokens, C)
        t = q * self._prefill_iteration_s(C) if q else 0.0
        if r:
            t += self._prefill_iteration_s(r)
        # Chunk i (0-based) of C tokens sees i * C earlier tokens; the remainder sees q * C:
        # sum = C * C * q (q - 1) / 2 + r * q * C pairs.
        return t + self.context_s_per_pair * (C * C * q * (q - 1) // 2 + r * q * C)

    def first_token_s(self, prompt_tokens: int) -> float:
        """Time to first token on an idle server, as the client sees it."""
        return self.request_overhead_s + self.prefill_s(prompt_tokens)

    def power_watts(self, decode_batch: int, prefill_tokens: int) -> float:
        if decode_batch < 0 or prefill_tokens < 0:
            raise ValueError(f"decode_batch ({decode_batch}) and prefill_tokens ({prefill_tokens}) must be >= 0")
        if decode_batch == 0 and prefill_tokens == 0:
            return self.idle_watts
        w = self._decode_watts(max(decode_batch, 1))
        if prefill_tokens:
            share = min(1.0, prefill_tokens / self.max_num_batched_tokens)
            base = self._w_watts[0]
            pw = base + (self._prefill_watts - base) * share
            if pw > w:
                w = pw
        return min(w, self.tdp_watts)

    def _decode_watts(self, batch: int) -> float:
        bs, ws = self._w_batch, self._w_watts
        if batch <= bs[0]:
            return ws[0]
        if batch >= bs[-1]:
            return ws[-1]
        i = bisect_right(bs, batch) - 1
        return ws[i] + (ws[i + 1] - ws[i]) * (batch - bs[i]) / (bs[i + 1] - bs[i])


def _plain_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _plain_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_plain_copy(v) for v in d]
    return d


# --------------------------------------------------------------------------- loading


def _profiles_dir() -> Traversable:
    return resources.files("kubetier.profiles")


@lru_cache(maxsize=1)
def _builtin_names() -> tuple[str, ...]:
    # Package data does not change while the process runs.
    return tuple(
        sorted(
            p.name[: -len(".yaml")]
            for p in _profiles_dir().iterdir()
            if p.name.endswith(".yaml") and not p.name.startswith("_")
        )
    )


def list_profiles() -> list[str]:
    """Names of the built-in profiles (``operator/kubetier/profiles/<name>.yaml``)."""
    return list(_builtin_names())


def _parse_yaml(text: str, where: str) -> LatencyModel:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProfileError(f"{where}: not valid YAML: {e}") from e
    try:
        return LatencyModel.from_dict(data)
    except ProfileError as e:
        raise ProfileError(f"{where}: {e}") from e


@cache
def _load_builtin(name: str) -> LatencyModel:
    text = _profiles_dir().joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    model = _parse_yaml(text, f"profile {name!r}")
    if model.name != name:
        raise ProfileError(f"profile {name!r}: name: {model.name!r} does not match its file name")
    return model


def load_profile(name_or_path: str) -> LatencyModel:
    """A built-in profile by name, or a profile YAML file by path."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ProfileError(f"profile: expected a built-in name or a YAML path, got {name_or_path!r}")
    if name_or_path in _builtin_names():
        return _load_builtin(name_or_path)
    looks_like_path = os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml"))
    if looks_like_path or os.path.exists(name_or_path):
        try:
            with open(name_or_path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ProfileError(f"profile {name_or_path!r}: cannot read: {e.strerror}") from e
        return _parse_yaml(text, f"profile {name_or_path!r}")
    raise ProfileError(
        f"profile {name_or_path!r}: no such built-in profile (available: {', '.join(list_profiles())}) and no such file"
    )
