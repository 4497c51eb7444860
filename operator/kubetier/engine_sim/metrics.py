"""Prometheus metrics of the engine simulator, with vLLM's metric names.

Hand-rolled rather than prometheus_client because one histogram observation here may
stand for a whole batch: every sequence decoding in an iteration sees the same
inter-token gap, so ``time_per_output_token_seconds`` is observed once per iteration
with a count, not once per token (no per-token cost at 1,000 streams). The text
format written here is checked with prometheus_client's parser in the tests.

Latency histograms are in wall-clock seconds as clients see them; with
``--time-scale F`` they are F times shorter than the profile's model time
(``kubetier_engine_time_scale`` says F so a consumer can convert).
"""

from __future__ import annotations

from bisect import bisect_left

# vLLM's bucket boundaries (vllm/engine/metrics.py), so dashboards built for vLLM fit.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
# vLLM's buckets for vllm:iteration_tokens_total (tokens per engine step)
ITERATION_TOKEN_BUCKETS = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last: +Inf only
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        """Record ``n`` observations of ``value``."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def quantile(self, q: float) -> float:
        """Upper bucket bound holding quantile ``q`` (coarse; for tests and logs)."""
        if not self.count:
            return 0.0
        target = q * self.count
        acc = 0
        for bound, c in zip(self.bounds + (float("inf"),), self.counts):
            acc += c
            if acc >= target:
                return bound
        return float("inf")

    def lines(self, name: str, labels: str) -> list[str]:
        out = []
        acc = 0
        for bound, c in zip(self.bounds, self.counts):
            acc += c
            out.append(f'{name}_bucket{{{labels},le="{_num(bound)}"}} {acc}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.sum!r}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


class EngineMetrics:
    """All the simulator's metrics; gauges are read from the engine at scrape time."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.labels = f'model_name="{_escape(model_name)}"'
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        # tokens per engine step, as vLLM's vllm:iteration_tokens_total; its count is the
        # number of steps, which the router's lag estimate reads (router/engine_progress.py)
        self.iteration_tokens = Histogram(ITERATION_TOKEN_BUCKETS)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = {"length": 0, "stop": 0, "abort": 0}
        self.failed_injected = 0
        self.energy_joules = 0.0

    def render(
        self,
        *,
        running: int,
        waiting: int,
        kv_usage: float,
        kv_tokens: int,
        queued_prefill_tokens: int,
        power_watts: float,
        time_scale: float,
        loaded: bool,
        sleep_state: str = "awake",
        power_cap_watts: float | None = None,
        max_power_watts: float | None = None,
    ) -> str:
        lab = self.labels
        lines: list[str] = []

        def gauge(name: str, help_: str, value: float) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name}{{{lab}}} {_num(value)}")

        def counter(name: str, help_: str, value: float, extra: str = "") -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} counter")
            lines.append(f"{name}_total{{{lab}{extra}}} {_num(value)}")

        def histogram(name: str, help_: str, h: Histogram) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} histogram")
            lines.extend(h.lines(name, lab))

        gauge("vllm:num_requests_running", "Number of requests in model execution batches.", running)
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting)
        gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", kv_usage)
        counter("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens)
        counter("vllm:generation_tokens", "Number of generation tokens processed.", self.generation_tokens)
        lines.append("# HELP vllm:request_success Count of successfully processed requests.")
        lines.append("# TYPE vllm:request_success counter")
        for reason, value in self.success.items():
            lines.append(f'vllm:request_success_total{{{lab},finished_reason="{reason}"}} {value}')
        histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft)
        histogram("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.", self.tpot)
        histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", self.e2e)
        histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", self.iteration_tokens
        )
        gauge(
            "kubetier_engine_power_watts",
            "Simulated board power of the current iteration (idle when no work).",
            power_watts,
        )
        if max_power_watts is not None:
            gauge(
                "kubetier_engine_power_cap_watts",
                "Power cap the engine runs under (node agent, POLCA); 0 = uncapped.",
                power_cap_watts or 0.0,
            )
            gauge(
                "kubetier_engine_max_power_watts", "The profile's TDP: the most this server can draw.", max_power_watts
            )
        counter(
            "kubetier_engine_energy_joules",
            "Simulated energy in model time (power x unscaled iteration time).",
            self.energy_joules,
        )
        gauge("kubetier_engine_kv_tokens", "KV-cache tokens held by running sequences.", kv_tokens)
        gauge(
            "kubetier_engine_queued_prefill_tokens",
            "Prompt tokens admitted or waiting, not yet prefilled.",
            queued_prefill_tokens,
        )
        gauge(
            "kubetier_engine_time_scale",
            "Simulation speed-up: wall-clock durations are model durations / this.",
            time_scale,
        )
        lines.append("# HELP vllm:engine_sleep_state Engine sleep state (1 for the current state).")
        lines.append("# TYPE vllm:engine_sleep_state gauge")
        for state in ("awake", "weights_offloaded", "discard_all"):
            lines.append(f'vllm:engine_sleep_state{{{lab},sleep_state="{state}"}} {1 if state == sleep_state else 0}')
        gauge("kubetier_engine_model_loaded", "1 once the simulated model load has finished.", 1 if loaded else 0)
        counter(
            "kubetier_engine_injected_failures", "Requests failed on purpose (--fail-fraction).", self.failed_injected
        )
        lines.append("")
        return "\n".join(lines)
