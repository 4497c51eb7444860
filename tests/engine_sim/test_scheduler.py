"""The continuous-batching scheduler, step by step on a virtual clock (no I/O)."""

from __future__ import annotations

import pytest

from kubetier.engine_sim.scheduler import BatchScheduler, Sequence
from kubetier.engine_sim.virtual import predict
from kubetier.policy.latency import load_profile


def run_steps(sched: BatchScheduler, n: int, start: int = 0) -> list:
    """Run ``n`` iterations, iteration i spanning virtual time [i, i + 1]."""
    steps = []
    for i in range(start, start + n):
        step = sched.plan(float(i))
        steps.append((step.decode_batch, step.prefill_tokens, [(s.prompt_tokens, c) for s, c in step.prefill]))
        sched.commit(step, float(i + 1))
    return steps


def test_prompt_is_prefilled_in_chunks_within_the_token_budget():
    sched = BatchScheduler(max_num_seqs=4, max_num_batched_tokens=100, kv_capacity_tokens=10_000)
    seq = Sequence(prompt_tokens=250, output_tokens=3)
    sched.add(seq)
    steps = run_steps(sched, 3)
    assert steps == [(0, 100, [(250, 100)]), (0, 100, [(250, 100)]), (0, 50, [(250, 50)])]
    # The iteration carrying the last prompt chunk samples the first token.
    assert seq.generated == 1 and seq.first_token_at == 3.0
    run_steps(sched, 2, start=3)
    assert seq.finished and seq.finished_at == 5.0 and seq.generated == 3


def test_decode_tokens_take_budget_first_and_prefill_mixes_in():
    sched = BatchScheduler(max_num_seqs=4, max_num_batched_tokens=100, kv_capacity_tokens=10_000)
    a = Sequence(prompt_tokens=10, output_tokens=50)
    sched.add(a)
    run_steps(sched, 1)  # a prefilled, decoding from now on
    b = Sequence(prompt_tokens=500, output_tokens=5)
    sched.add(b)
    step = sched.plan(1.0)
    assert step.decode_batch == 1 and step.prefill_tokens == 99  # Sarathi-style mixed iteration
    before = a.generated
    sched.commit(step, 2.0)
    assert a.generated == before + 1  # every decoding sequence emits one token per iteration


def test_max_num_seqs_makes_extra_requests_wait_fifo():
    sched = BatchScheduler(max_num_seqs=2, max_num_batched_tokens=100, kv_capacity_tokens=10_000)
    seqs = [Sequence(prompt_tokens=5, output_tokens=2) for _ in range(3)]
    for s in seqs:
        sched.add(s)
    sched.plan(0.0)
    assert sched.num_running == 2 and sched.num_waiting == 1
    assert seqs[2].admitted_at is None
    # Run until the first two finish: the third is admitted only then.
    for i in range(4):
        sched.commit(sched.plan(float(i)), float(i + 1))
        if seqs[0].finished:
            break
    sched.plan(10.0)
    assert seqs[2].admitted_at == 10.0


def test_kv_capacity_limits_admission():
    sched = BatchScheduler(max_num_seqs=10, max_num_batched_tokens=1000, kv_capacity_tokens=300)
    big = Sequence(prompt_tokens=100, output_tokens=100)
    second = Sequence(prompt_tokens=100, output_tokens=100)
    sched.add(big)
    sched.add(second)
    sched.plan(0.0)
    assert sched.num_running == 1 and sched.num_waiting == 1  # 200 reserved, 200 more would not fit
    with pytest.raises(ValueError, match="KV capacity"):
        sched.add(Sequence(prompt_tokens=200, output_tokens=101))


def test_kv_accounting_returns_to_zero_and_aborts_release():
    sched = BatchScheduler(max_num_seqs=4, max_num_batched_tokens=64, kv_capacity_tokens=10_000)
    keep = Sequence(prompt_tokens=100, output_tokens=4)
    gone = Sequence(prompt_tokens=100, output_tokens=40)
    sched.add(keep)
    sched.add(gone)
    sched.commit(sched.plan(0.0), 1.0)
    assert sched.kv_held == 64
    sched.commit(sched.plan(1.0), 2.0)
    sched.abort(gone)
    for i in range(2, 20):
        if not sched.has_work:
            break
        sched.commit(sched.plan(float(i)), float(i + 1))
    assert keep.finished and gone.aborted and not gone.finished
    assert sched.kv_held == 0 and sched.kv_reserved == 0 and not sched.has_work


def test_on_token_is_called_once_per_token():
    calls = []
    sched = BatchScheduler(max_num_seqs=4, max_num_batched_tokens=64, kv_capacity_tokens=10_000)
    seq = Sequence(prompt_tokens=10, output_tokens=5, on_token=lambda s: calls.append(s.generated))
    sched.add(seq)
    run_steps(sched, 6)
    assert calls == [1, 2, 3, 4, 5]


def test_refuses_more_seqs_than_token_budget():
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        BatchScheduler(max_num_seqs=300, max_num_batched_tokens=256, kv_capacity_tokens=10_000)


def test_virtual_run_matches_the_latency_model_for_one_request():
    model = load_profile("llama-3.1-8b-h100")
    (p,) = predict(model, [(0.0, 5000, 11)])
    assert p.ttft_s == pytest.approx(model.first_token_s(5000))  # request overhead, then the prompt
    # Decode iterations at batch 1 with KV from 5001 to 5010 tokens.
    expected = sum(model.decode_iteration_s(1, 5001 + i) for i in range(10)) / 10
    assert p.tpot_s == pytest.approx(expected)
    # Time scale divides every duration.
    (q,) = predict(model, [(0.0, 5000, 11)], time_scale=10)
    assert q.ttft_s == pytest.approx(p.ttft_s / 10)


def test_virtual_run_waits_for_a_slot():
    model = load_profile("llama-3.1-8b-h100")
    first, second = predict(model, [(0.0, 100, 20), (0.0, 100, 20)], max_num_seqs=1)
    assert second.ttft_s > first.e2e_s  # queued behind the whole first request
