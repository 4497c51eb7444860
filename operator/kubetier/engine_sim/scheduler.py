"""The continuous-batching scheduler of the engine simulator: pure state, no clock, no I/O.

One engine iteration (vLLM V1 with chunked prefill, Sarathi-Serve's mixed batches):

1. Admission, FIFO: waiting sequences join while fewer than ``max_num_seqs`` run and
   the KV cache can hold them. A sequence reserves its whole footprint (prompt +
   output tokens) on admission, so a running sequence is never preempted; the KV
   usage reported is the tokens actually held (prompt prefilled + tokens generated).
   A head-of-line sequence that does not fit blocks the ones behind it (strict FIFO,
   as vLLM's waiting queue).
2. Every decoding sequence contributes one token; the rest of the
   ``max_num_batched_tokens`` budget goes to prompt chunks of the prefilling
   sequences in admission order.
3. The iteration lasts ``LatencyModel.iteration_s(decode_batch, kv_tokens,
   prefill_tokens)`` (the caller sleeps it).
4. At its end each decoding sequence emits one token; a sequence whose last prompt
   chunk was in this iteration emits its first token (the same forward pass samples
   it) and decodes from the next iteration on. Sequences reaching their output
   length finish and release their KV.

Per token the scheduler does one increment, one comparison and (for streams) one
callback: the callback is the whole per-token cost of the HTTP layer too.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class Sequence:
    prompt_tokens: int
    output_tokens: int
    arrival: float = 0.0
    # Called after each generated token (``generated`` already counts it); None for
    # non-streamed requests, which need no per-token work at all.
    on_token: Callable[[Sequence], None] | None = None
    ctx: Any = None  # the HTTP handler's own state (future, response)
    prefilled: int = 0
    generated: int = 0
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    finished: bool = False
    aborted: bool = False

    @property
    def footprint(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(slots=True)
class Step:
    """One planned iteration."""

    decode: list[Sequence]
    prefill: list[tuple[Sequence, int]]
    decode_batch: int
    prefill_tokens: int
    kv_tokens: int
    # Sum over the chunks of chunk tokens x prompt tokens prefilled before the chunk: the
    # attention of each chunk to its prompt's earlier chunks (LatencyModel.iteration_s).
    context_pairs: int = 0


@dataclass(slots=True)
class StepResult:
    first_tokens: list[Sequence] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)
    decode_tokens: int = 0  # tokens emitted by sequences that were already decoding


class BatchScheduler:
    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int, kv_capacity_tokens: int) -> None:
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(
                f"max_num_seqs ({max_num_seqs}) exceeds max_num_batched_tokens "
                f"({max_num_batched_tokens}): every running sequence needs a token per iteration"
            )
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.kv_capacity_tokens = kv_capacity_tokens
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.prefilling: list[Sequence] = []
        self.decoding: list[Sequence] = []
        self.kv_reserved = 0  # footprints of admitted sequences
        self.kv_held = 0  # tokens in the KV cache now
        self._aborted_running = False

    # --- queries ----------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    @property
    def queued_prefill_tokens(self) -> int:
        """Prompt tokens admitted or waiting but not prefilled yet."""
        return sum(s.prompt_tokens - s.prefilled for s in self.prefilling) + sum(s.prompt_tokens for s in self.waiting)

    # --- changes ----------------------------------------------------------------------

    def fits(self, seq: Sequence) -> bool:
        return seq.footprint <= self.kv_capacity_tokens

    def add(self, seq: Sequence) -> None:
        if seq.prompt_tokens < 1 or seq.output_tokens < 1:
            raise ValueError("a sequence needs at least one prompt and one output token")
        if not self.fits(seq):
            raise ValueError(f"sequence of {seq.footprint} tokens exceeds the KV capacity ({self.kv_capacity_tokens})")
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        """Drop a sequence (client gone). Its KV is released at the next plan()."""
        if seq.finished or seq.aborted:
            return
        seq.aborted = True
        if seq.admitted_at is None:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        else:
            self._aborted_running = True

    def plan(self, now: float) -> Step:
        if self._aborted_running:
            self._drop_aborted()
        self._admit(now)
        decode = self.decoding
        budget = self.max_num_batched_tokens - len(decode)
        chunks: list[tuple[Sequence, int]] = []
        prefill_tokens = 0
        context_pairs = 0
        for seq in self.prefilling:
            if budget <= 0:
                break
            n = seq.prompt_tokens - seq.prefilled
            if n > budget:
                n = budget
            chunks.append((seq, n))
            prefill_tokens += n
            context_pairs += n * seq.prefilled
            budget -= n
        return Step(decode, chunks, len(decode), prefill_tokens, self.kv_held, context_pairs)

    def commit(self, step: Step, now: float) -> StepResult:
        """Apply a planned iteration that ended at ``now``; emit its tokens."""
        result = StepResult()
        finished = result.finished
        # First tokens go out before the decode burst: with hundreds of streams the burst
        # takes milliseconds of CPU, and a first token waiting behind it is TTFT the model
        # did not predict (measured: 15-20 ms of client-side TTFT at 256 streams).
        started: list[Sequence] = []
        joining: list[Sequence] = []  # decode from the next iteration on
        for seq, n in step.prefill:
            if seq.aborted:
                continue
            seq.prefilled += n
            self.kv_held += n
            if seq.prefilled >= seq.prompt_tokens:
                started.append(seq)
        if started:
            done_prefill = set(map(id, started))
            self.prefilling = [s for s in self.prefilling if id(s) not in done_prefill]
            for seq in started:
                seq.generated = 1
                seq.first_token_at = now
                self.kv_held += 1
                if seq.on_token is not None:
                    seq.on_token(seq)
                if seq.aborted:
                    self._release(seq)  # in neither list any more
                elif seq.generated >= seq.output_tokens:
                    finished.append(seq)
                else:
                    joining.append(seq)
            result.first_tokens = started

        emitted = 0
        for seq in step.decode:
            if seq.aborted:
                continue
            seq.generated += 1
            emitted += 1
            if seq.on_token is not None:
                seq.on_token(seq)  # may abort the sequence (fault injection)
            if seq.generated >= seq.output_tokens and not seq.aborted:
                finished.append(seq)
        result.decode_tokens = emitted
        self.kv_held += emitted
        # After the decode loop: step.decode may be this very list.
        self.decoding.extend(joining)

        if finished:
            for seq in finished:
                seq.finished = True
                seq.finished_at = now
                self.kv_reserved -= seq.footprint
                self.kv_held -= seq.prompt_tokens + seq.generated
            self.decoding = [s for s in self.decoding if not s.finished]
        return result

    # --- internals --------------------------------------------------------------------

    def _admit(self, now: float) -> None:
        waiting = self.waiting
        while waiting and self.num_running < self.max_num_seqs:
            seq = waiting[0]
            if self.kv_reserved + seq.footprint > self.kv_capacity_tokens:
                break
            waiting.popleft()
            seq.admitted_at = now
            self.kv_reserved += seq.footprint
            self.prefilling.append(seq)

    def _drop_aborted(self) -> None:
        self._aborted_running = False
        for seq in self.prefilling:
            if seq.aborted:
                self._release(seq)
        for seq in self.decoding:
            if seq.aborted:
                self._release(seq)
        self.prefilling = [s for s in self.prefilling if not s.aborted]
        self.decoding = [s for s in self.decoding if not s.aborted]

    def _release(self, seq: Sequence) -> None:
        self.kv_reserved -= seq.footprint
        self.kv_held -= seq.prefilled + seq.generated
