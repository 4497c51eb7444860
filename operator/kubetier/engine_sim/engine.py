"""The engine simulator's iteration loop: one asyncio task driving the scheduler in time.

A request reaches the scheduler ``requestOverheadMs / time_scale`` (on average; drawn
uniformly from zero to twice that) after it arrived: the serving work outside the
iterations. Each iteration sleeps until
``start + model.iteration_s(...) * slowdown / time_scale``
on an absolute schedule: the next iteration starts at the previous one's *planned*
end, not at whenever the loop got round to it, so per-iteration overhead (writing a
thousand chunks) and timer rounding do not accumulate into drift. If the loop falls
further behind than ``max_lag_s`` (CPU starved) the schedule restarts from now: the
lost time is then real and shows up as slower tokens, as on a stalled GPU.

The clock is ``time.monotonic`` (a parameter): uvloop's ``loop.time()`` has 1 ms
resolution, too coarse for sub-millisecond scaled iterations; timers still fire on
the loop, so wake-ups land within about a millisecond of the schedule and average out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from kubetier.engine_sim.metrics import EngineMetrics
from kubetier.engine_sim.scheduler import BatchScheduler, Sequence
from kubetier.policy.latency import LatencyModel
from kubetier.policy.power_cap import capped_model

log = logging.getLogger("kubetier.engine_sim")


class Engine:
    def __init__(
        self,
        model: LatencyModel,
        metrics: EngineMetrics,
        *,
        max_num_seqs: int | None = None,
        time_scale: float = 1.0,
        slowdown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        max_lag_s: float = 0.25,
        rng: random.Random | None = None,
        request_overhead_s: float | None = None,
    ) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if not slowdown > 0:
            raise ValueError(f"slowdown must be > 0, got {slowdown}")
        self.model = model
        self.metrics = metrics
        self.scheduler = BatchScheduler(
            max_num_seqs or model.max_num_seqs, model.max_num_batched_tokens, model.kv_capacity_tokens
        )
        self.time_scale = time_scale
        self.slowdown = slowdown
        self.clock = clock
        self.max_lag_s = max_lag_s
        self._rng = rng or random.Random(0)
        # Default: the profile's requestOverheadMs; 0 times the iterations alone.
        self.request_overhead_s = model.request_overhead_s if request_overhead_s is None else request_overhead_s
        if not self.request_overhead_s >= 0:
            raise ValueError(f"request_overhead_s must be >= 0, got {request_overhead_s}")
        self.power_watts = model.idle_watts
        # Power cap (node agent, POLCA): the loop runs the capped model, a slower server.
        self.power_cap_watts: float | None = None
        self._capped_model: LatencyModel | None = None
        self.iterations = 0
        self.error: BaseException | None = None  # set if the loop crashed
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_step_end = 0.0

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-sim-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:
                pass  # already logged when the loop crashed
            self._task = None

    # --- requests ---------------------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        """Accept a request. It reaches the scheduler after the profile's request overhead
        (HTTP, chat template, tokenization, hand-off to the engine loop: vLLM's API server
        does that work before the engine core sees the request), so time to first token
        includes it and no iteration is slowed by it."""
        if self.error is not None:
            raise RuntimeError(f"engine loop crashed: {self.error!r}")
        seq.arrival = self.clock()
        # Serving work varies request to request (prompt length, parser, GC): drawn
        # uniformly around the profile's mean. A fixed delay would lock closed-loop
        # streams that finish together into waves that re-enter together forever.
        delay = self.request_overhead_s * 2.0 * self._rng.random() / self.time_scale
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._hand_off, seq)
        else:
            self._hand_off(seq)

    def _hand_off(self, seq: Sequence) -> None:
        if seq.aborted or self.error is not None:
            return  # gone before it reached the engine loop (abort resolved it)
        self.scheduler.add(seq)
        self._wake.set()

    def abort(self, seq: Sequence) -> None:
        if seq.finished or seq.aborted:
            return
        self.scheduler.abort(seq)
        self.metrics.success["abort"] += 1
        self._resolve(seq)

    def set_power_cap(self, cap_watts: float | None) -> None:
        """Run capped from the next iteration on (None lifts the cap); refuses a cap at or below idle."""
        capped = capped_model(self.model, cap_watts)
        self._capped_model = None if capped is self.model else capped
        self.power_cap_watts = None if self._capped_model is None else float(cap_watts or 0.0)

    @property
    def kv_usage(self) -> float:
        return self.scheduler.kv_held / self.scheduler.kv_capacity_tokens

    # --- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here would silently hang every request: make it loud
            log.exception("engine loop crashed")
            self.error = exc
            # Release every request in flight; their handlers see `error` and fail them.
            s = self.scheduler
            for seq in [*s.waiting, *s.prefilling, *s.decoding]:
                seq.aborted = True
                self._resolve(seq)
            raise

    async def _loop(self) -> None:
        scheduler = self.scheduler
        model = self.model
        metrics = self.metrics
        clock = self.clock
        schedule = clock()
        while True:
            if not scheduler.has_work:
                self.power_watts = model.idle_watts
                self._wake.clear()
                await self._wake.wait()
                schedule = clock()
                self._last_step_end = schedule
            now = clock()
            step = scheduler.plan(now)
            if step.decode_batch == 0 and step.prefill_tokens == 0:
                # Nothing admissible yet (aborted sequences only): go round again.
                await asyncio.sleep(0)
                continue
            active = self._capped_model or model  # the capped model while a power cap is set
            model_s = (
                active.iteration_s(step.decode_batch, step.kv_tokens, step.prefill_tokens, step.context_pairs)
                * self.slowdown
            )
            watts = active.power_watts(step.decode_batch, step.prefill_tokens)
            self.power_watts = watts
            metrics.energy_joules += watts * model_s
            if now - schedule > self.max_lag_s:
                schedule = now  # too far behind to catch up: restart the schedule
            schedule += model_s / self.time_scale
            delay = schedule - now
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let I/O run between back-to-back iterations
            end = clock()
            result = scheduler.commit(step, end)
            self.iterations += 1
            metrics.iteration_tokens.observe(step.decode_batch + step.prefill_tokens)
            if result.decode_tokens:
                metrics.tpot.observe(end - self._last_step_end, result.decode_tokens)
            self._last_step_end = end
            metrics.generation_tokens += result.decode_tokens + len(result.first_tokens)
            for seq in result.first_tokens:
                metrics.ttft.observe(end - seq.arrival)
                metrics.prompt_tokens += seq.prompt_tokens
            for seq in result.finished:
                metrics.e2e.observe(end - seq.arrival)
                reason = seq.ctx.finish_reason if seq.ctx is not None else "length"
                metrics.success[reason] = metrics.success.get(reason, 0) + 1
                self._resolve(seq)

    @staticmethod
    def _resolve(seq: Sequence) -> None:
        ctx = seq.ctx
        if ctx is not None and ctx.done is not None and not ctx.done.done():
            ctx.done.set_result(None)
