"""The simulator's HTTP API, consumed by a stock OpenAI client and by raw HTTP."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubetier.engine_sim.tokens import filler_text

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def client_for(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=30)


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "model_name"))
            out[(sample.name, labels)] = sample.value
    return out


async def test_openai_client_completion_non_streaming(sim_server):
    _, url = await sim_server(time_scale=20)
    async with client_for(url) as client:
        result = await client.completions.create(model=MODEL, prompt="Say something", max_tokens=7)
    assert result.object == "text_completion"
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 7
    assert result.usage.prompt_tokens == 4  # ceil(13 chars / 4)
    assert len(result.choices[0].text.split()) == 7


async def test_openai_client_completion_streaming_with_usage(sim_server):
    _, url = await sim_server(time_scale=20)
    async with client_for(url) as client:
        stream = await client.completions.create(
            model=MODEL, prompt="x" * 400, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    token_chunks = [c for c in chunks if c.choices]
    assert len(token_chunks) == 12
    assert [c.choices[0].finish_reason for c in token_chunks] == [None] * 11 + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == 100
    assert len({c.id for c in chunks}) == 1


async def test_openai_client_chat_both_ways(sim_server):
    _, url = await sim_server(time_scale=20)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    async with client_for(url) as client:
        full = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
        stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, stream=True)
        chunks = [chunk async for chunk in stream]
    assert full.object == "chat.completion"
    assert full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens == 5
    assert full.usage.prompt_tokens == 4 + 2 * 4  # ceil(13/4) + 4 per message
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(text.split()) == 5
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "chat.completion.chunk" for c in chunks)


async def test_prompt_tokens_hint_and_token_id_prompts(sim_server):
    _, url = await sim_server(time_scale=20)
    async with client_for(url) as client:
        hinted = await client.completions.create(
            model=MODEL, prompt="hi", max_tokens=1, extra_body={"prompt_tokens": 1234}
        )
        ids = await client.completions.create(model=MODEL, prompt=[1, 2, 3, 4, 5], max_tokens=1)
    assert hinted.usage.prompt_tokens == 1234
    assert ids.usage.prompt_tokens == 5


async def test_output_length_is_drawn_when_max_tokens_is_absent(sim_server):
    _, url = await sim_server(time_scale=50, mean_output_tokens=20, seed=3)
    async with client_for(url) as client:
        results = await asyncio.gather(*[client.completions.create(model=MODEL, prompt="tell me") for _ in range(8)])
    lengths = [r.usage.completion_tokens for r in results]
    assert all(r.choices[0].finish_reason == "stop" for r in results)
    assert all(n >= 1 for n in lengths) and len(set(lengths)) > 1


async def test_models_lists_the_served_name(sim_server):
    _, url = await sim_server(model_name="my-model")
    async with client_for(url) as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == ["my-model"]


async def test_metrics_parse_and_count(sim_server):
    sim, url = await sim_server(time_scale=20)
    async with client_for(url) as client:
        await client.completions.create(model=MODEL, prompt="abcd" * 10, max_tokens=6)
        await client.completions.create(model=MODEL, prompt="abcd" * 5, max_tokens=4)
    async with httpx.AsyncClient() as http:
        r = await http.get(url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:gpu_cache_usage_perc",
        "kubetier_engine_power_watts",
    ):
        assert families[name].type == "gauge"
    for name in (
        "vllm:time_to_first_token_seconds",
        "vllm:time_per_output_token_seconds",
        "vllm:e2e_request_latency_seconds",
    ):
        assert families[name].type == "histogram"
    assert all(s.labels.get("model_name") == MODEL for f in families.values() for s in f.samples)
    values = metric_values(r.text)
    assert values[("vllm:prompt_tokens_total", ())] == 15
    assert values[("vllm:generation_tokens_total", ())] == 10
    assert values[("vllm:time_to_first_token_seconds_count", ())] == 2
    assert values[("vllm:e2e_request_latency_seconds_count", ())] == 2
    assert values[("vllm:time_per_output_token_seconds_count", ())] == 5 + 3  # tokens after the first
    assert values[("vllm:request_success_total", (("finished_reason", "length"),))] == 2
    assert values[("vllm:num_requests_running", ())] == 0
    assert values[("kubetier_engine_power_watts", ())] == sim.model.idle_watts  # idle again
    assert values[("kubetier_engine_energy_joules_total", ())] > 0


async def test_health_is_503_while_loading_then_200(sim_server):
    _, url = await sim_server(model_load_seconds=0.4)
    async with httpx.AsyncClient() as http:
        early = await http.get(url + "/health")
        early_completion = await http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
        await asyncio.sleep(0.6)
        late = await http.get(url + "/health")
        metrics = await http.get(url + "/metrics")
    assert early.status_code == 503 and early_completion.status_code == 503
    assert late.status_code == 200
    assert metric_values(metrics.text)[("kubetier_engine_model_loaded", ())] == 1


async def test_model_load_time_is_scaled(sim_server):
    _, url = await sim_server(model_load_seconds=10, time_scale=50)  # 0.2 s of wall time
    async with httpx.AsyncClient() as http:
        assert (await http.get(url + "/health")).status_code == 503
        await asyncio.sleep(0.4)
        assert (await http.get(url + "/health")).status_code == 200


async def test_max_num_seqs_makes_extra_requests_wait(sim_server):
    sim, url = await sim_server(max_num_seqs=2, time_scale=1)
    async with client_for(url) as client:
        tasks = [
            asyncio.create_task(client.completions.create(model=MODEL, prompt="go", max_tokens=40)) for _ in range(5)
        ]
        # Read the gauges once all five have arrived (the client's first requests can take
        # longer than a fixed 0.1 s to reach the engine on a loaded machine) and before the
        # first two finish (40 tokens): two run, three wait.
        async with httpx.AsyncClient() as http:
            for _ in range(250):
                values = metric_values((await http.get(url + "/metrics")).text)
                if values[("vllm:num_requests_running", ())] + values[("vllm:num_requests_waiting", ())] >= 5:
                    break
                await asyncio.sleep(0.02)
        results = await asyncio.gather(*tasks)
    assert values[("vllm:num_requests_running", ())] == 2
    assert values[("vllm:num_requests_waiting", ())] == 3
    assert values[("vllm:gpu_cache_usage_perc", ())] > 0
    assert all(r.usage.completion_tokens == 40 for r in results)
    assert sim.engine.scheduler.kv_held == 0


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/completions", {"model": MODEL}, 400, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": 5}, 400, "temperature"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, 400, "stream"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 2}, 400, "n"),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}},
            400,
            "stream_options",
        ),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 200000}, 400, "max_tokens"),
        ("/v1/completions", {"model": 7, "prompt": "x"}, 400, "model"),
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
            400,
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
            400,
            "messages[0].content",
        ),
    ],
)
async def test_bad_requests_get_openai_errors_naming_the_field(sim_server, path, body, status, param):
    _, url = await sim_server()
    async with httpx.AsyncClient() as http:
        r = await http.post(url + path, json=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == status and error["message"]


async def test_invalid_json_and_wrong_method_and_unknown_path(sim_server):
    _, url = await sim_server()
    async with httpx.AsyncClient() as http:
        bad_json = await http.post(url + "/v1/completions", content=b"{nope")
        wrong_method = await http.get(url + "/v1/completions")
        unknown = await http.get(url + "/v2/whatever")
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
    assert wrong_method.status_code == 405
    assert unknown.status_code == 404


async def test_openai_client_raises_its_own_errors(sim_server):
    _, url = await sim_server()
    async with client_for(url) as client:
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="other", prompt="x", max_tokens=1)
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            await client.completions.create(model=MODEL, prompt="x", max_tokens=10**6)


async def test_generated_text_is_deterministic_filler(sim_server):
    _, url = await sim_server(time_scale=20)
    async with client_for(url) as client:
        result = await client.completions.create(model=MODEL, prompt="x", max_tokens=9)
    words = result.choices[0].text
    # Whatever the offset, it is a run of the filler vocabulary.
    assert any(words == filler_text(offset, 9) for offset in range(64))


# --- fault injection -------------------------------------------------------------------


async def test_fail_fraction_one_fails_every_request(sim_server):
    _, url = await sim_server(fail_fraction=1.0)
    async with client_for(url) as client:
        with pytest.raises(openai.InternalServerError):
            await client.completions.create(model=MODEL, prompt="x", max_tokens=3)
    async with httpx.AsyncClient() as http:
        values = metric_values((await http.get(url + "/metrics")).text)
    assert values[("kubetier_engine_injected_failures_total", ())] == 1


async def test_fail_fraction_half_fails_about_half(sim_server):
    _, url = await sim_server(fail_fraction=0.5, time_scale=50, seed=7)
    async with httpx.AsyncClient() as http:
        codes = [
            (
                await http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
            ).status_code
            for _ in range(60)
        ]
    failures = codes.count(500)
    assert codes.count(200) + failures == 60
    assert 15 <= failures <= 45


async def test_abort_after_tokens_cuts_streams_mid_way(sim_server):
    sim, url = await sim_server(abort_after_tokens=5, time_scale=20)
    received = []
    async with client_for(url) as client:
        stream = await client.completions.create(model=MODEL, prompt="x", max_tokens=50, stream=True)
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                received.append(chunk)
    assert len(received) == 5
    await asyncio.sleep(0.05)
    assert sim.engine.scheduler.kv_held == 0 and not sim.engine.scheduler.has_work


async def test_abort_also_cuts_non_streamed_requests(sim_server):
    _, url = await sim_server(abort_after_tokens=3, time_scale=20)
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 10})


async def test_slowdown_stretches_iterations(sim_server):
    async def decode_time(**config) -> float:
        _, url = await sim_server(**config)
        async with httpx.AsyncClient() as http:
            start = asyncio.get_running_loop().time()
            await http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 30})
            return asyncio.get_running_loop().time() - start

    fast = await decode_time(time_scale=2)
    slow = await decode_time(time_scale=2, slowdown=3)
    assert slow > 2.2 * fast


async def test_client_disconnect_frees_the_slot(sim_server):
    sim, url = await sim_server(time_scale=1, max_num_seqs=1)
    async with httpx.AsyncClient() as http:
        async with http.stream(
            "POST", url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5000, "stream": True}
        ) as r:
            async for _ in r.aiter_bytes():
                break  # one chunk, then hang up
        await asyncio.sleep(0.05)
        assert not sim.engine.scheduler.has_work
        # The single slot is free again: a new request completes.
        r = await http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
    assert r.status_code == 200


async def test_engine_loop_crash_fails_requests_instead_of_hanging(sim_server):
    sim, url = await sim_server(time_scale=20)

    def broken(*args):
        raise RuntimeError("model bug")

    sim.model = sim.engine.model = type(
        "Broken", (), {"iteration_s": broken, "power_watts": broken, "idle_watts": 0.0}
    )()
    async with httpx.AsyncClient() as http:
        r = await asyncio.wait_for(
            http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3}), 5
        )
        again = await http.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3})
    assert r.status_code == 500 and again.status_code == 500
