"""The router reads the metric names real engines export today: vLLM's
kv_cache_usage_perc (the deprecated gpu_cache_usage_perc only as a fallback) and SGLang's
sglang: metrics. The real-vLLM e2e tier (e2e/vllm) reads a live vLLM's /metrics too."""

from __future__ import annotations

from kubetier.router.fleet import parse_engine_metrics

VLLM_CURRENT = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.4
"""


def test_vllm_current_name():
    assert parse_engine_metrics(VLLM_CURRENT) == (5, 0.4)


def test_vllm_deprecated_name_is_a_fallback_only():
    old = VLLM_CURRENT.replace(b"kv_cache_usage_perc", b"gpu_cache_usage_perc")
    assert parse_engine_metrics(old) == (5, 0.4)
    both = VLLM_CURRENT + b'vllm:gpu_cache_usage_perc{model_name="tiny"} 0.9\n'
    assert parse_engine_metrics(both) == (5, 0.4)


def test_sglang_names():
    text = b"""# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m",tp_rank="0"} 7.0
sglang:num_queue_reqs{model_name="m",tp_rank="0"} 1.0
sglang:token_usage{model_name="m",tp_rank="0"} 0.25
sglang:gen_throughput{model_name="m",tp_rank="0"} 812.5
"""
    assert parse_engine_metrics(text) == (8, 0.25)


def test_unlabelled_lines_and_no_engine_metrics():
    assert parse_engine_metrics(b"vllm:num_requests_running 4\nvllm:kv_cache_usage_perc 0.5\n") == (4, 0.5)
    assert parse_engine_metrics(b"process_cpu_seconds_total 3\n") is None
