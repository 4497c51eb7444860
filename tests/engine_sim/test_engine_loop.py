"""The engine loop's schedule: absolute deadlines, so per-iteration overhead does not
accumulate into drift (no HTTP here: sequences are submitted directly)."""

from __future__ import annotations

import asyncio
import time

import pytest

from kubetier.engine_sim.engine import Engine
from kubetier.engine_sim.metrics import EngineMetrics
from kubetier.engine_sim.scheduler import Sequence
from kubetier.policy.latency import load_profile


async def run_one(engine: Engine, prompt: int, output: int, on_token=None) -> Sequence:
    done = asyncio.get_running_loop().create_future()

    class Ctx:
        finish_reason = "length"

    ctx = Ctx()
    ctx.done = done
    seq = Sequence(prompt, output, on_token=on_token, ctx=ctx)
    engine.submit(seq)
    await done
    return seq


@pytest.mark.slow
async def test_overhead_per_iteration_does_not_accumulate():
    model = load_profile("llama-3.1-8b-h100")
    engine = Engine(model, EngineMetrics("m"), time_scale=2)
    engine.start()
    try:

        def busy(seq: Sequence) -> None:
            # 1 ms of CPU after every token: a third of each ~3.3 ms scaled iteration.
            end = time.perf_counter() + 0.001
            while time.perf_counter() < end:
                pass

        seq = await run_one(engine, 100, 150, on_token=busy)
    finally:
        await engine.stop()
    decode_s = seq.finished_at - seq.first_token_at
    expected = sum(model.decode_iteration_s(1, 101 + i) for i in range(149)) / 2
    # A relative schedule would take ~(3.3 + 1) / 3.3 = 1.3x as long.
    assert decode_s == pytest.approx(expected, rel=0.05)


async def test_model_time_and_power_are_accounted():
    model = load_profile("llama-3.1-8b-h100")
    metrics = EngineMetrics("m")
    engine = Engine(model, metrics, time_scale=50)
    engine.start()
    try:
        seq = await run_one(engine, 3000, 20)
    finally:
        await engine.stop()
    assert seq.finished and seq.generated == 20
    assert metrics.generation_tokens == 20 and metrics.prompt_tokens == 3000
    assert metrics.ttft.count == 1 and metrics.e2e.count == 1 and metrics.tpot.count == 19
    # Energy is integrated in model time: between idle and TDP for the whole request.
    model_s = model.prefill_s(3000) + sum(model.decode_iteration_s(1, 3001 + i) for i in range(19))
    assert model.idle_watts * model_s < metrics.energy_joules < model.tdp_watts * model_s
    assert engine.power_watts == model.idle_watts  # idle again afterwards
