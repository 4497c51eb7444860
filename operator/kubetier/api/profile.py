"""The latency profile: one pydantic definition for every place a profile is written.

Built-in profiles (``kubetier/profiles/<name>.yaml``), a ModelService's
``spec.latencyProfile.inline``, a ConfigMap referenced by ``configMapRef``, the
``profile`` of the routing document and an inline profile in the router's config file
all have this shape (docs/contracts.md, camelCase keys).
``kubetier.policy.latency.LatencyModel.from_dict`` validates through
:class:`LatencyProfile` and precomputes its grids from the validated model.

Field checks (types, ranges) are per field; the consistency rules that span fields
(grids start at batch 1 and KV 0, strictly increasing axes, matching lengths, times
that never fall as batch or KV grow, power between idle and TDP) are one model
validator whose messages name the offending field. The CRD carries the field checks;
the consistency rules have no CEL twin (they iterate over nested grids, beyond CEL's
cost budget), so an inline profile that breaks one is accepted by the apiserver, refused
by ``kubetier render`` and reported by the operator as ``Degraded`` with reason
``InvalidSpec`` (``ProfileInvalid`` for a profile in a ConfigMap), the field named.

Bounds are sanity checks that catch unit mistakes (seconds written as milliseconds,
bytes as tokens), not hardware limits.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from kubetier.api.common import MAX_NAME_LENGTH, ApiModel, api_config
from kubetier.api.errors import NOT_BLANK as _NOT_BLANK

MAX_ITERATION_MS = 60_000.0
MAX_KV_TOKENS = 1_000_000_000
MAX_SEQS = 1_000_000
MAX_WATTS = 100_000.0
MAX_GPUS = 64
# Profiles are tables of profiled points: a handful to a few dozen per axis.
MAX_GRID = 64
MAX_SOURCES = 32
# A pair costs well under a nanosecond on any datacenter GPU (4 x hidden x layers FLOPs);
# 1,000 ns per pair would be a unit slip (ms or us written as ns).
MAX_CONTEXT_NS_PER_PAIR = 1_000.0
MAX_REQUEST_OVERHEAD_MS = 10_000.0

BatchSize = Annotated[int, Field(ge=1, le=MAX_SEQS)]
TokenCount = Annotated[int, Field(ge=1, le=MAX_KV_TOKENS)]
KvTokens = Annotated[int, Field(ge=0, le=MAX_KV_TOKENS)]
IterationMs = Annotated[float, Field(gt=0, le=MAX_ITERATION_MS)]
Watts = Annotated[float, Field(gt=0, le=MAX_WATTS)]


class ProfileModel(ApiModel):
    """Strict types: ``1.5`` is no token count and ``true`` no number (a YAML slip)."""

    model_config = api_config(strict=True)


class ProfileEngine(ProfileModel):
    name: str = Field(
        max_length=64, pattern=_NOT_BLANK, description="Serving engine the profile describes (vllm, sglang)."
    )
    version: str = Field(
        max_length=64, pattern=_NOT_BLANK, description="Engine version the calibrating measurements were taken with."
    )


class ProfileGpu(ProfileModel):
    product: str = Field(max_length=128, pattern=_NOT_BLANK, description="GPU product, as nvidia.com/gpu.product.")
    count: int = Field(ge=1, le=MAX_GPUS, description="GPUs one engine spans (tensor-parallel size).")


class DecodeTable(ProfileModel):
    batch_sizes: list[BatchSize] = Field(
        min_length=2, max_length=MAX_GRID, description="Strictly increasing, starting at 1."
    )
    kv_tokens: list[KvTokens] = Field(
        min_length=2,
        max_length=MAX_GRID,
        description="Total KV tokens held by the running batch; strictly increasing, starting at 0.",
    )
    iteration_ms: list[Annotated[list[IterationMs], Field(min_length=2, max_length=MAX_GRID)]] = Field(
        min_length=2,
        max_length=MAX_GRID,
        description="Time of one decode-only iteration; rows follow batchSizes, columns follow kvTokens.",
    )


class PrefillTable(ProfileModel):
    tokens: list[TokenCount] = Field(
        min_length=1, max_length=MAX_GRID, description="Prompt tokens in one iteration; strictly increasing."
    )
    ms: list[IterationMs] = Field(
        min_length=1, max_length=MAX_GRID, description="Time of an iteration carrying that many prompt tokens."
    )
    context_ns_per_token_pair: float = Field(
        default=0.0,
        ge=0,
        le=MAX_CONTEXT_NS_PER_PAIR,
        description=(
            "Attention of a prompt chunk to the earlier chunks of its prompt: nanoseconds per "
            "(chunk token x earlier prompt token) pair, added to the iteration that carries the chunk. "
            "0 leaves it out (profiles written before it existed)."
        ),
    )


class DecodeWatts(ProfileModel):
    batch_sizes: list[BatchSize] = Field(min_length=1, max_length=MAX_GRID, description="Strictly increasing.")
    watts: list[Watts] = Field(min_length=1, max_length=MAX_GRID, description="Board power at that batch size.")


class PowerTable(ProfileModel):
    idle_watts: Watts = Field(description="Board power with no work.")
    tdp_watts: Watts = Field(description="Board power limit.")
    decode_watts: DecodeWatts
    prefill_watts: Watts = Field(description="Board power during a full prefill chunk.")


class LatencyProfile(ProfileModel):
    """A latency profile (docs/contracts.md); see the module docstring for the rules."""

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=_NOT_BLANK)
    model: str | None = Field(default=None, max_length=256, pattern=_NOT_BLANK)
    gpu: ProfileGpu | None = None
    kv_capacity_tokens: int = Field(ge=1, le=MAX_KV_TOKENS, description="Tokens of KV cache the engine can hold.")
    max_num_seqs: int = Field(ge=1, le=MAX_SEQS, description="vLLM --max-num-seqs.")
    max_num_batched_tokens: int = Field(
        ge=1,
        le=MAX_KV_TOKENS,
        description="Chunked-prefill token budget per iteration (vLLM --max-num-batched-tokens).",
    )
    engine: ProfileEngine | None = Field(default=None, description="Engine and version the profile describes.")
    request_overhead_ms: float = Field(
        default=0.0,
        ge=0,
        le=MAX_REQUEST_OVERHEAD_MS,
        description=(
            "Per-request serving cost outside the engine iterations (HTTP, chat template, tokenization, "
            "hand-off to the engine loop, first-token detokenization): added once to every time to first token."
        ),
    )
    decode: DecodeTable
    prefill: PrefillTable
    power: PowerTable
    sources: list[Annotated[str, Field(pattern=_NOT_BLANK)]] = Field(
        default_factory=list, max_length=MAX_SOURCES, description="Where the numbers come from."
    )

    @model_validator(mode="after")
    def _consistent(self) -> LatencyProfile:
        problem = consistency_problem(self)
        if problem:
            raise ValueError(problem)
        return self


def _increasing(values: list[int], path: str) -> str | None:
    for i in range(1, len(values)):
        if values[i] <= values[i - 1]:
            return f"{path}[{i}]: must be strictly increasing ({values[i]} after {values[i - 1]})"
    return None


def _non_decreasing(values: list[float], path: str, what: str) -> str | None:
    for i in range(1, len(values)):
        if values[i] < values[i - 1]:
            return f"{path}[{i}]: {values[i]:g} is below {values[i - 1]:g}; {what}"
    return None


def consistency_problem(p: LatencyProfile) -> str | None:
    """The first rule ``p`` breaks, as ``<field>: <why>``, or None."""
    if p.max_num_batched_tokens < p.max_num_seqs:
        # vLLM refuses this too: every running sequence needs a token slot per step.
        return f"maxNumBatchedTokens: {p.max_num_batched_tokens} is below maxNumSeqs ({p.max_num_seqs})"
    dec = p.decode
    problem = _increasing(dec.batch_sizes, "decode.batchSizes")
    if problem:
        return problem
    if dec.batch_sizes[0] != 1:
        return f"decode.batchSizes[0]: must be 1 (the grid starts at batch 1), got {dec.batch_sizes[0]}"
    problem = _increasing(dec.kv_tokens, "decode.kvTokens")
    if problem:
        return problem
    if dec.kv_tokens[0] != 0:
        return f"decode.kvTokens[0]: must be 0 (the grid starts at an empty cache), got {dec.kv_tokens[0]}"
    rows = dec.iteration_ms
    if len(rows) != len(dec.batch_sizes):
        return f"decode.iterationMs: has {len(rows)} rows, decode.batchSizes has {len(dec.batch_sizes)}"
    for i, row in enumerate(rows):
        rp = f"decode.iterationMs[{i}]"
        if len(row) != len(dec.kv_tokens):
            return f"{rp}: has {len(row)} columns, decode.kvTokens has {len(dec.kv_tokens)}"
        problem = _non_decreasing(row, rp, "iteration time cannot fall as the KV cache grows")
        if problem:
            return problem
    for j in range(len(dec.kv_tokens)):
        for i in range(1, len(rows)):
            if rows[i][j] < rows[i - 1][j]:
                return (
                    f"decode.iterationMs[{i}][{j}]: {rows[i][j]:g} is below "
                    f"decode.iterationMs[{i - 1}][{j}] ({rows[i - 1][j]:g}); "
                    "iteration time cannot fall as the batch grows"
                )
    pre = p.prefill
    problem = _increasing(pre.tokens, "prefill.tokens")
    if problem:
        return problem
    if len(pre.ms) != len(pre.tokens):
        return f"prefill.ms: has {len(pre.ms)} entries, prefill.tokens has {len(pre.tokens)}"
    problem = _non_decreasing(pre.ms, "prefill.ms", "more prompt tokens cannot take less time")
    if problem:
        return problem
    if pre.ms[0] < rows[0][0]:
        return (
            f"prefill.ms[0]: {pre.ms[0]:g} is below decode.iterationMs[0][0] ({rows[0][0]:g}); "
            "an iteration carrying prompt tokens cannot beat a one-token decode step"
        )
    pw = p.power
    if pw.tdp_watts < pw.idle_watts:
        return f"power.tdpWatts: {pw.tdp_watts:g} is below power.idleWatts ({pw.idle_watts:g})"
    dw = pw.decode_watts
    problem = _increasing(dw.batch_sizes, "power.decodeWatts.batchSizes")
    if problem:
        return problem
    if len(dw.watts) != len(dw.batch_sizes):
        return (
            f"power.decodeWatts.watts: has {len(dw.watts)} entries, "
            f"power.decodeWatts.batchSizes has {len(dw.batch_sizes)}"
        )
    for i, w in enumerate(dw.watts):
        if not pw.idle_watts <= w <= pw.tdp_watts:
            return f"power.decodeWatts.watts[{i}]: {w:g} is outside [idleWatts {pw.idle_watts:g}, tdpWatts {pw.tdp_watts:g}]"
    problem = _non_decreasing(dw.watts, "power.decodeWatts.watts", "a larger batch cannot draw less power")
    if problem:
        return problem
    if not pw.idle_watts <= pw.prefill_watts <= pw.tdp_watts:
        return (
            f"power.prefillWatts: {pw.prefill_watts:g} is outside "
            f"[idleWatts {pw.idle_watts:g}, tdpWatts {pw.tdp_watts:g}]"
        )
    return None
