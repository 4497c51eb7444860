"""Timing fidelity on loopback: TTFT/TPOT measured by a client against the real
`kubetier engine-sim` process, compared with the latency model's prediction for the
same arrivals (the scheduler replayed on a virtual clock)."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import subprocess

import pytest

from kubetier.engine_sim.loadgen import run_concurrent
from kubetier.engine_sim.virtual import predict
from kubetier.localdev.processes import free_loopback_port, kubetier_command, start_process, stop_process, wait_http_ok
from kubetier.policy.latency import load_profile

PROFILE = "llama-3.1-8b-h100"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@contextlib.contextmanager
def engine_process(*flags: str):
    port = free_loopback_port()
    proc = start_process(
        kubetier_command("engine-sim", "--port", str(port), "--profile", PROFILE, *flags), subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(url + "/health", timeout=20, proc=proc)
        yield proc, url
    finally:
        stop_process(proc, timeout=10)


async def measure(url: str, prompts: list[int], max_tokens: int) -> list[tuple[float, float, float]]:
    """(sent_at - t0, ttft, mean tpot) per streamed completion, stamped client-side."""
    port = int(url.rsplit(":", 1)[1])
    bodies = [
        {"model": MODEL, "prompt": "x", "prompt_tokens": p, "max_tokens": max_tokens, "stream": True} for p in prompts
    ]
    results = await run_concurrent("127.0.0.1", port, "/v1/completions", bodies)
    t0 = min(r.sent for r in results)
    for r in results:
        assert r.status == 200 and r.error is None and r.done, r
        assert r.tokens == max_tokens
    return [(r.sent - t0, r.ttft, r.tpot) for r in results]


def compare(measured, prompts, max_tokens, overhead=True, **model_args):
    model = load_profile(PROFILE)
    if not overhead:
        model = dataclasses.replace(model, request_overhead_s=0.0)
    predicted = predict(model, [(m[0], p, max_tokens) for m, p in zip(measured, prompts)], **model_args)
    ttft_m = statistics.median(m[1] for m in measured)
    ttft_p = statistics.median(p.ttft_s for p in predicted)
    tpot_m = statistics.median(m[2] for m in measured)
    tpot_p = statistics.median(p.tpot_s for p in predicted)
    print(
        f"TTFT median measured {ttft_m * 1e3:.2f} ms, model {ttft_p * 1e3:.2f} ms; "
        f"TPOT median measured {tpot_m * 1e3:.3f} ms, model {tpot_p * 1e3:.3f} ms"
    )
    return ttft_m, ttft_p, tpot_m, tpot_p


@pytest.mark.slow
async def test_ttft_and_tpot_follow_the_model_time_scaled():
    # 24 concurrent streams of mixed prompt lengths: prefill chunks interleave with
    # decode (mixed iterations), and the batch grows and shrinks.
    prompts = [500 + 300 * i for i in range(24)]
    # Without the request overhead: its random draws would reorder admissions against
    # the virtual replay (the overhead is checked by the single-request test below).
    with engine_process("--time-scale", "4", "--max-num-seqs", "64", "--request-overhead-ms", "0") as (_, url):
        measured = await measure(url, prompts, max_tokens=48)
    ttft_m, ttft_p, tpot_m, tpot_p = compare(measured, prompts, 48, time_scale=4, max_num_seqs=64, overhead=False)
    # Timer wake-ups land within ~1 ms of the schedule; loopback adds well under that.
    assert ttft_m == pytest.approx(ttft_p, rel=0.10, abs=0.002)
    assert tpot_m == pytest.approx(tpot_p, rel=0.10, abs=0.0003)


@pytest.mark.slow
async def test_ttft_and_tpot_follow_the_model_at_real_speed():
    prompts = [2048, 4000, 300, 1000]
    with engine_process("--request-overhead-ms", "0") as (_, url):
        measured = await measure(url, prompts, max_tokens=30)
    ttft_m, ttft_p, tpot_m, tpot_p = compare(measured, prompts, 30, overhead=False)
    assert ttft_m == pytest.approx(ttft_p, rel=0.10, abs=0.002)
    assert tpot_m == pytest.approx(tpot_p, rel=0.10, abs=0.0005)


@pytest.mark.slow
async def test_a_single_request_matches_the_closed_form():
    model = load_profile(PROFILE)
    with engine_process("--time-scale", "2") as (_, url):
        port = int(url.rsplit(":", 1)[1])
        body = {"model": MODEL, "prompt": "x", "prompt_tokens": 6000, "max_tokens": 60, "stream": True}
        (result,) = await run_concurrent("127.0.0.1", port, "/v1/completions", [body])
    assert result.tokens == 60
    gaps = [b - a for a, b in zip(result.token_times, result.token_times[1:])]
    # The request overhead is drawn around its mean (0 to twice it): one request sees one draw.
    assert result.ttft == pytest.approx(
        model.first_token_s(6000) / 2, rel=0.10, abs=0.002 + model.request_overhead_s / 2
    )
    assert result.ttft > model.prefill_s(6000) / 2 * 0.98
    # A trimmed mean: one scheduling hiccup on a shared machine does not move it, and the
    # 1 ms timer rounding of single gaps still averages out.
    trimmed = sorted(gaps)[len(gaps) // 10 : -(len(gaps) // 10)]
    assert statistics.mean(trimmed) == pytest.approx(model.decode_iteration_s(1, 6030) / 2, rel=0.10, abs=0.0003)
