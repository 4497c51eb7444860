"""Real vLLM (CPU build from PyPI) behind kubetier's router, on loopback.

Two engines are started with exactly the command the operator renders for a `vllm`
ModelService (kubetier.operator.modelservice.engines), except the interpreter (the cached
venv's python for `python3`) and the bind address (127.0.0.1 for the pod's 0.0.0.0, as
every local process here binds loopback). The model is a tiny random Llama built locally
(e2e/vllm/tiny_model.py). Checked:

- the operator's vLLM flags are the installed vLLM's CLI names (the snapshot
  vllm-cli-flags.txt, used by the unit tests, is the live parser's list);
- the live /metrics carries vllm:kv_cache_usage_perc and no deprecated
  vllm:gpu_cache_usage_perc, and the router's metric reader parses it;
- non-streaming and streaming chat and completions through the router with the OpenAI
  client, with usage;
- a completions stream whose engine is killed (SIGKILL) on its first relayed token is
  resumed by the router on the second real engine by token ids (the router asks vLLM for
  `return_token_ids` and resumes with the original prompt's ids plus the relayed ids):
  the client sees one stream of exactly max_tokens tokens, none repeated or missing. The
  engine to kill is the one whose access log shows the stream's response started; the
  stream is 4,000 tokens long, so the kill lands well inside it.

Run by `make e2e-vllm` (part of `make test`), which installs vLLM into the cache first.
Outside CI a missing install skips with the command that provides it; in CI it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from kubetier.api.modelservice import ModelService
from kubetier.localdev.processes import started_process
from kubetier.operator.modelservice import engines
from kubetier.policy.latency import load_profile
from kubetier.router.fleet import parse_engine_metrics

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CACHE = Path(os.environ.get("KUBETIER_CACHE") or Path.home() / ".cache" / "kubetier").expanduser()
FLAGS_SNAPSHOT = HERE / "vllm-cli-flags.txt"
MAX_MODEL_LEN = 8192  # the tiny model's positions (e2e/vllm/tiny_model.py MAX_POSITIONS)

# Two real engines start in about a minute each on an idle 2-core machine, several under load.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def need(ok: bool, why: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


@pytest.fixture(scope="module")
def vllm_python() -> str:
    res = subprocess.run([sys.executable, str(HERE / "install.py"), "--python"], capture_output=True, text=True)
    need(res.returncode == 0, "vLLM is not installed: run `python3 e2e/vllm/install.py` (about 6 GB, minutes)")
    return res.stdout.strip()


@pytest.fixture(scope="module")
def tiny_model(vllm_python: str) -> Path:
    out = CACHE / "vllm-tiny-model-8k"  # 8,192 positions (tiny_model.MAX_POSITIONS); the 2,048 one was vllm-tiny-model
    subprocess.run([vllm_python, str(HERE / "tiny_model.py"), str(out)], check=True, timeout=900)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_service(model_dir: Path, port: int) -> ModelService:
    return ModelService.model_validate(
        {
            "apiVersion": "kubetier.io/v1alpha1",
            "kind": "ModelService",
            "metadata": {"name": "tiny", "namespace": "default"},
            "spec": {
                "model": {"name": "tiny", "source": str(model_dir)},
                "engine": {
                    "kind": "vllm",
                    "port": port,
                    "maxNumSeqs": 8,
                    "maxNumBatchedTokens": 512,
                    "maxModelLen": MAX_MODEL_LEN,
                    # vLLM's CPU backend reads this as the share of host memory to reserve.
                    "gpuMemoryUtilization": 0.15,
                    "args": ["--dtype", "bfloat16"],
                },
                "resources": {"gpusPerReplica": 0},
                "latencyProfile": {"builtin": "llama-3.1-8b-h100"},
                "tiers": [{"name": "standard", "ttftMs": 60000, "tpotMs": 5000, "replicas": {"min": 1, "max": 2}}],
            },
        }
    )


def rendered_command(vllm_python: str, model_dir: Path, port: int) -> list[str]:
    spec = model_service(model_dir, port).spec
    profile = engines.batching_profile(spec, load_profile("llama-3.1-8b-h100").to_dict())
    cmd = engines.engine_command(spec, profile)
    assert cmd[0] == "python3" and cmd[cmd.index("--host") + 1] == engines.POD_BIND_ADDRESS
    cmd = [vllm_python, *cmd[1:]]
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    return cmd


def started(argv: list[str], log: Path, env: dict[str, str] | None = None) -> contextlib.AbstractContextManager:
    """The engine or router in its own session, stopped with its children at the end
    (vLLM forks an engine core; SIGTERM first, 30 s to shut down)."""
    return started_process(argv, log, env=env, stop_timeout=30)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise AssertionError(f"{url} not healthy after {timeout}s:\n{log.read_text()[-4000:]}")


def live_flags(vllm_python: str) -> list[str]:
    res = subprocess.run([vllm_python, str(HERE / "cli_flags.py")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return [ln for ln in res.stdout.splitlines() if ln.startswith("--")]


def test_rendered_flags_are_the_installed_vllms_cli(vllm_python, tiny_model):
    flags = live_flags(vllm_python)
    assert "--max-num-seqs" in flags and len(flags) > 100
    snapshot = [ln for ln in FLAGS_SNAPSHOT.read_text().splitlines() if ln.startswith("--")]
    assert snapshot == flags, "e2e/vllm/vllm-cli-flags.txt is stale: regenerate it from the installed vLLM"
    rendered = {a for a in rendered_command(vllm_python, tiny_model, 8000) if a.startswith("--")}
    assert rendered <= set(flags), sorted(rendered - set(flags))


@pytest.fixture(scope="module")
def stack(vllm_python, tiny_model, tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("real-vllm")
    ports = [free_port(), free_port()]
    router_port = free_port()
    env = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    (tmp / "router.yaml").write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "tiny",
                        "profile": "llama-3.1-8b-h100",
                        "tiers": [
                            {
                                "name": "standard",
                                "ttftMs": 60000,
                                "tpotMs": 5000,
                                "priority": 10,
                                "meanOutputTokens": 32,
                            }
                        ],
                        "servers": [
                            {"url": f"http://127.0.0.1:{p}", "tier": "standard", "id": f"vllm-{i}"}
                            for i, p in enumerate(ports)
                        ],
                    }
                ]
            }
        )
    )
    with contextlib.ExitStack() as es:
        procs = []
        for i, port in enumerate(ports):
            log = tmp / f"vllm-{i}.log"
            procs.append((es.enter_context(started(rendered_command(vllm_python, tiny_model, port), log, env)), log))
        router = es.enter_context(
            started(
                [
                    sys.executable,
                    "-m",
                    "kubetier.cli",
                    "router",
                    "--port",
                    str(router_port),
                    "--config",
                    str(tmp / "router.yaml"),
                    "--stall-timeout",
                    "5",
                ],
                tmp / "router.log",
            )
        )
        for (p, log), port in zip(procs, ports):
            wait_healthy(f"http://127.0.0.1:{port}/health", p, log)
        wait_healthy(f"http://127.0.0.1:{router_port}/health", router, tmp / "router.log", timeout=60)
        yield {
            "ports": ports,
            "procs": [p for p, _ in procs],
            "logs": [log for _, log in procs],
            "router": f"http://127.0.0.1:{router_port}",
            "tmp": tmp,
        }


def client(stack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=stack["router"] + "/v1", api_key="unused", default_headers={"x-kubetier-tier": "standard"}, timeout=120
    )


def test_live_metrics_use_the_current_names_and_the_router_reads_them(stack):
    text = httpx.get(f"http://127.0.0.1:{stack['ports'][0]}/metrics", timeout=10).content
    assert re.search(rb"^vllm:kv_cache_usage_perc\{", text, re.M)
    assert not re.search(rb"^vllm:gpu_cache_usage_perc", text, re.M)
    parsed = parse_engine_metrics(text)
    assert parsed is not None and 0.0 <= parsed[1] <= 1.0
    # The router re-probes an engine it saw down every few seconds: wait for both.
    deadline = time.monotonic() + 60
    while True:
        servers = httpx.get(stack["router"] + "/kubetier/status", timeout=5).json()["models"]["tiny"]["servers"]
        if (len(servers) == 2 and all(s["ready"] for s in servers)) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(servers) == 2 and all(s["ready"] for s in servers), servers


def test_non_streaming_through_the_router(stack):
    c = client(stack)
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert chat.choices[0].message.content is not None and chat.usage.completion_tokens >= 1
    comp = c.completions.create(model="tiny", prompt="def f(x):", max_tokens=8, extra_body={"ignore_eos": True})
    assert comp.usage.completion_tokens == 8 and comp.choices[0].text


def test_streaming_through_the_router(stack):
    c = client(stack)
    stream = c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    usage = [ch.usage for ch in chunks if ch.usage]
    assert text and usage and usage[-1].completion_tokens == 16
    assert any(ch.choices and ch.choices[0].finish_reason == "length" for ch in chunks)


# uvicorn's access line, which vLLM's API server writes (unless --disable-uvicorn-access-log,
# which the operator does not render) when a response starts: uvicorn 0.55 logs it in
# send() on http.response.start, before it writes the status line. So by the time the router
# has the engine's response headers, and long before the client has a token, the serving
# engine's log has the line; the other engine's has not.
COMPLETIONS_STARTED = re.compile(rb'"POST /v1/completions HTTP/1\.[01]" 200\b')


def completions_started(log: Path) -> int:
    """How many /v1/completions responses this engine has started (its access-log lines)."""
    return len(COMPLETIONS_STARTED.findall(log.read_bytes()))


def serving_engine(logs: list[Path], before: list[int]) -> int:
    """The one engine whose log gained a started /v1/completions response since ``before``."""
    now = [completions_started(log) for log in logs]
    new = [i for i, (b, n) in enumerate(zip(before, now, strict=True)) if n > b]
    assert len(new) == 1 and now[new[0]] == before[new[0]] + 1, (
        f"expected exactly one engine to have started the stream: /v1/completions access lines before {before}, now {now}"
    )
    return new[0]


# Long enough that the kill lands well inside the first engine's stream: 1,500 tokens took
# 3.7 s on a quiet 2-core machine, and a kill that came after the last token passed nothing
# to resume. prompt + MAX_TOKENS < MAX_MODEL_LEN, on the first engine and on the resumed one.
MAX_TOKENS = 4000


def test_stream_resumes_by_token_ids_on_the_second_real_engine_after_the_first_is_killed(stack):
    """SIGKILL the engine serving a completions stream as soon as its first token reaches
    the client; the client still sees one uninterrupted stream (one chunk id, no error
    event) of exactly max_tokens tokens, the second real engine continuing from the exact
    token ids the client has: its prompt is the original prompt's ids plus every id
    already relayed (no token repeated, none missing, no re-tokenisation).

    Deterministic: the engine to kill is read from the engines' own access logs (not from
    a metric a stats logger refreshes, nor from CPU time); ignore_eos + min_tokens make the
    engine generate all max_tokens (it cannot stop early on a sampled EOS); and the
    preconditions are asserted, each with its own message: exactly one engine started the
    stream, the killed one; it died of the kill; less than half the tokens had been relayed
    when its stream broke; the survivor started the resumed stream."""
    c = client(stack)
    # A short stream first, so the client's own first-use costs (the OpenAI client builds
    # its stream and chunk types lazily) are paid before the timed one: without it the first
    # token reached the client 0.97 s after the request on a loaded 2-core machine, by when
    # the engine had streamed 276 tokens.
    warm = c.completions.create(model="tiny", prompt="x", max_tokens=2, stream=True, extra_body={"ignore_eos": True})
    assert [ch.choices[0].finish_reason for ch in warm if ch.choices and ch.choices[0].finish_reason] == ["length"]
    logs: list[Path] = stack["logs"]
    before = [completions_started(log) for log in logs]
    t0 = time.monotonic()
    stream = c.completions.create(
        model="tiny",
        prompt="import os\nimport sys\n",
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "min_tokens": MAX_TOKENS},
    )
    killed: list[int] = []
    kill_at: dict[str, float] = {}
    ids: list[int] = []  # token ids in the order the client got them
    prompts: list[tuple[int, list[int]]] = []  # (ids received before it, prompt_token_ids) per engine stream
    chunk_ids: set[str] = set()
    finishes: list[str] = []
    usage = None
    for chunk in stream:
        chunk_ids.add(chunk.id)
        if chunk.usage:
            usage = chunk.usage
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        extra = choice.model_extra or {}
        if extra.get("prompt_token_ids") is not None:
            prompts.append((len(ids), list(extra["prompt_token_ids"])))
        assert extra.get("token_ids") is not None, f"a token event without token ids: {chunk}"
        ids.extend(extra["token_ids"])
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
        if ids and not killed:
            first_token_s = time.monotonic() - t0
            serving = serving_engine(logs, before)
            os.killpg(stack["procs"][serving].pid, signal.SIGKILL)
            killed.append(serving)
            kill_at = {"first_token_s": first_token_s, "kill_s": time.monotonic() - t0, "client_tokens": len(ids)}
    total_s = time.monotonic() - t0
    assert killed, "the stream produced no token"
    assert stack["procs"][killed[0]].wait(30) == -signal.SIGKILL, "the serving engine did not die of the SIGKILL"
    survivor = 1 - killed[0]
    assert len(prompts) >= 1, "the first engine's stream carried no prompt_token_ids"
    relayed_before_break = prompts[1][0] if len(prompts) > 1 else len(ids)
    print(
        f"[kill-resume] engine vllm-{killed[0]} killed: first token at {kill_at['first_token_s']:.3f}s, "
        f"SIGKILL at {kill_at['kill_s']:.3f}s with {kill_at['client_tokens']} token(s) at the client; "
        f"the first engine's stream broke after {relayed_before_break} of {MAX_TOKENS} tokens; "
        f"vllm-{survivor} finished the stream at {total_s:.2f}s"
    )
    assert relayed_before_break <= MAX_TOKENS // 2, (
        f"the kill landed late: {relayed_before_break} of {MAX_TOKENS} tokens were relayed before the first "
        f"engine's stream broke (SIGKILL {kill_at['kill_s'] - kill_at['first_token_s']:.3f}s after the first token)"
    )
    assert completions_started(logs[survivor]) == before[survivor] + 1, (
        "the surviving engine did not start exactly one /v1/completions response (the resumed stream)"
    )
    # One stream, as if from one engine.
    assert len(chunk_ids) == 1, chunk_ids
    assert finishes == ["length"], finishes
    assert usage is not None and usage.completion_tokens == MAX_TOKENS, usage
    assert len(ids) == MAX_TOKENS, f"the client got {len(ids)} tokens, asked for {MAX_TOKENS}"
    # Two engine streams: the first engine's, and the survivor's that starts where the
    # client was: its prompt = original prompt ids + exactly the ids relayed so far.
    assert len(prompts) == 2, [(n, len(p)) for n, p in prompts]
    (n0, original), (n1, resumed) = prompts
    assert n0 == 0 and 1 <= n1 < MAX_TOKENS, (n0, n1)
    assert resumed == original + ids[:n1], "the resumed prompt is not the original prompt plus the relayed ids"
    assert usage.prompt_tokens == len(original), usage
    metrics = httpx.get(stack["router"] + "/metrics", timeout=5).text
    migrations = sum(float(v) for v in re.findall(r"^kubetier_router_migrations_total\{[^}]*\} (\S+)", metrics, re.M))
    assert migrations == 1, f"the router recorded {migrations} mid-stream migrations, expected 1"
    text = httpx.get(f"http://127.0.0.1:{stack['ports'][survivor]}/metrics", timeout=5).text
    served = sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)", text, re.M))
    assert served >= 1, "the surviving engine finished no request"
