"""The router in front of real engine simulators on loopback (all separate processes).

- three tiers, one 4-sequence server each: the tight tier meets its SLO while the loose
  tier, whose bin saturates, spills onto the tighter servers; a tier escalation
  attempt is refused with 403;
- a server answering 500 before the first token: the request is retried elsewhere;
- an engine killed mid-stream: the stream resumes on another server and the client
  reads one complete stream.
"""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
from router_procs import free_port, wait_http, wait_servers_ready, write_config

pytestmark = pytest.mark.slow


async def stream_tokens(
    client: httpx.AsyncClient, url: str, headers: dict, body: dict, on_token=None
) -> tuple[list[str], bool, list[dict]]:
    texts: list[str] = []
    errors: list[dict] = []
    done = False
    async with client.stream("POST", url, headers=headers, json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                done = True
                continue
            ev = json.loads(payload)
            if "error" in ev:
                errors.append(ev["error"])
                continue
            if ev.get("choices"):
                c = ev["choices"][0]
                piece = c.get("text") if "text" in c else (c.get("delta") or {}).get("content")
                if piece:
                    texts.append(piece)
                    if on_token is not None:
                        await on_token(len(texts))
    return texts, done, errors


def test_tight_tier_meets_slo_while_loose_tier_spills_and_escalation_is_refused(procs, small_profile, tmp_path):
    ports = {"tight": free_port(), "mid": free_port(), "loose": free_port()}
    for _tier, port in ports.items():
        procs.engine(port, "m", small_profile)
    rport = free_port()
    cfg = {
        "models": [
            {
                "name": "m",
                "profile": small_profile,
                "tiers": [
                    {"name": "tight", "ttftMs": 1500, "tpotMs": 50, "priority": 100, "meanOutputTokens": 32},
                    {"name": "mid", "ttftMs": 3000, "tpotMs": 100, "priority": 50, "meanOutputTokens": 32},
                    {
                        "name": "loose",
                        "ttftMs": 10000,
                        "tpotMs": 250,
                        "priority": 10,
                        "meanOutputTokens": 32,
                        "onLate": "queue",
                    },
                ],
                "servers": [{"url": f"http://127.0.0.1:{p}", "tier": t, "id": t} for t, p in ports.items()],
            }
        ],
        "apiKeys": [{"key": "k-loose", "tiers": ["loose"]}, {"key": "k-all", "tiers": ["tight", "mid", "loose"]}],
    }
    procs.start("router", "--port", str(rport), "--config", write_config(tmp_path, cfg), "--log-level", "WARNING")
    for p in ports.values():
        wait_http(f"http://127.0.0.1:{p}/health")
    wait_http(f"http://127.0.0.1:{rport}/health")
    base = f"http://127.0.0.1:{rport}"
    wait_servers_ready(base)
    url = base + "/v1/completions"

    async def run() -> tuple[list, list]:
        async with httpx.AsyncClient(timeout=30) as client:
            started = asyncio.Event()
            count = {"n": 0}

            async def first_token(_n):
                count["n"] += 1
                if count["n"] >= 2:
                    started.set()

            tight_hdr = {"authorization": "Bearer k-all", "x-kubetier-tier": "tight"}
            # max_tokens 40 at ~7 ms a step: the tight streams are still running when
            # the loose burst arrives.
            body = {"model": "m", "prompt": "hello", "prompt_tokens": 200, "max_tokens": 40, "stream": True}
            tight = [asyncio.create_task(stream_tokens(client, url, tight_hdr, body, first_token)) for _ in range(2)]
            await asyncio.wait_for(started.wait(), 10)
            loose_hdr = {"authorization": "Bearer k-loose"}
            loose_body = dict(body, max_tokens=30)
            loose = [asyncio.create_task(stream_tokens(client, url, loose_hdr, loose_body)) for _ in range(10)]
            return await asyncio.gather(*tight), await asyncio.gather(*loose)

    tight, loose = asyncio.run(run())
    for texts, done, errors in tight:
        assert len(texts) == 40 and done and not errors
    for texts, done, errors in loose:
        assert len(texts) == 30 and done and not errors

    status = httpx.get(base + "/kubetier/status").json()["models"]["m"]["tiers"]
    assert status["tight"]["completed"] == 2 and status["tight"]["sloMet"] == 2
    assert status["tight"]["spilled"] == 0
    # 10 loose requests, 4 fit on the loose server: the others went to tighter servers.
    assert status["loose"]["completed"] == 10
    assert status["loose"]["spilled"] >= 4
    metrics = httpx.get(base + "/metrics").text
    assert 'kubetier_router_spills_total{model="m",tier="loose"' in metrics

    # Escalation: a loose-only key asking for the tight tier.
    r = httpx.post(
        url,
        headers={"authorization": "Bearer k-loose", "x-kubetier-tier": "tight"},
        json={"model": "m", "prompt": "x", "max_tokens": 2},
    )
    assert r.status_code == 403
    assert "may not use tier 'tight'" in r.json()["error"]["message"]
    # Bad input gets a 4xx naming the problem, never a 500.
    r = httpx.post(url, headers={"authorization": "Bearer k-all"}, content=b'{"model": "m", "prompt": "x"}')
    assert r.status_code == 415 and "Content-Type" in r.json()["error"]["message"]  # enforced
    js = {"authorization": "Bearer k-all", "content-type": "application/json"}
    r = httpx.post(url, headers=js, content=b'{"model": "m", "prompt": ')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(url, headers={"authorization": "Bearer k-all"}, json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404
    r = httpx.post(url, headers={"authorization": "Bearer k-all"}, json={"model": "m"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(
        url, headers={"authorization": "Bearer k-all"}, json={"model": "m", "prompt": "x", "prompt_tokens": 10**6}
    )
    assert r.status_code == 400 and "tokens" in r.json()["error"]["message"]
    r = httpx.post(url, headers={"authorization": "Bearer wrong"}, json={"model": "m", "prompt": "x"})
    assert r.status_code == 401


def test_retry_before_first_token_and_resume_after_an_engine_is_killed(procs, tmp_path):
    good, failing, victim, spare = free_port(), free_port(), free_port(), free_port()
    procs.engine(good, "r", "llama-3.1-8b-h100")
    procs.engine(failing, "r", "llama-3.1-8b-h100", "--fail-fraction", "1.0")
    victim_proc = procs.engine(victim, "k", "llama-3.1-8b-h100")
    procs.engine(spare, "k", "llama-3.1-8b-h100")
    rport = free_port()
    tier = [{"name": "std", "ttftMs": 2000, "tpotMs": 100, "priority": 1, "meanOutputTokens": 64}]
    cfg = {
        "models": [
            # Ties go to the server that sorts last by id: the failing one is tried first.
            {
                "name": "r",
                "profile": "llama-3.1-8b-h100",
                "tiers": tier,
                "servers": [
                    {"url": f"http://127.0.0.1:{good}", "tier": "std", "id": "a-good"},
                    {"url": f"http://127.0.0.1:{failing}", "tier": "std", "id": "z-failing"},
                ],
            },
            {
                "name": "k",
                "profile": "llama-3.1-8b-h100",
                "tiers": tier,
                "servers": [
                    {"url": f"http://127.0.0.1:{spare}", "tier": "std", "id": "a-spare"},
                    {"url": f"http://127.0.0.1:{victim}", "tier": "std", "id": "z-victim"},
                ],
            },
        ]
    }
    procs.start("router", "--port", str(rport), "--config", write_config(tmp_path, cfg), "--log-level", "WARNING")
    for p in (good, failing, victim, spare, rport):
        wait_http(f"http://127.0.0.1:{p}/health")
    base = f"http://127.0.0.1:{rport}"
    wait_servers_ready(base)

    r = httpx.post(base + "/v1/completions", json={"model": "r", "prompt": "hi", "max_tokens": 5}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5, r.text
    st = httpx.get(base + "/kubetier/status").json()["models"]["r"]["tiers"]["std"]
    assert st["retries"] >= 1 and st["completed"] == 1, st

    async def run():
        async with httpx.AsyncClient(timeout=30) as client:

            async def kill_at(n):
                if n == 10:
                    victim_proc.send_signal(signal.SIGKILL)

            return await stream_tokens(
                client,
                base + "/v1/chat/completions",
                {},
                {
                    "model": "k",
                    "messages": [{"role": "user", "content": "tell me"}],
                    "max_tokens": 120,
                    "stream": True,
                },
                kill_at,
            )

    texts, done, errors = asyncio.run(run())
    assert not errors and done, (errors, done, len(texts))
    assert len(texts) == 120  # one stream, every token once
    st = httpx.get(base + "/kubetier/status").json()["models"]["k"]
    assert st["tiers"]["std"]["migrations"] == 1 and st["tiers"]["std"]["completed"] == 1, st
    assert {s["id"]: s["ready"] for s in st["servers"]}["z-victim"] is False


def test_two_workers_share_one_port_and_report_together(procs, tmp_path):
    eport, rport = free_port(), free_port()
    procs.engine(eport, "w", "llama-3.1-8b-h100")
    cfg = {
        "models": [
            {
                "name": "w",
                "profile": "llama-3.1-8b-h100",
                "tiers": [{"name": "std", "ttftMs": 2000, "tpotMs": 100}],
                "servers": [{"url": f"http://127.0.0.1:{eport}", "tier": "std"}],
            }
        ]
    }
    procs.start(
        "router",
        "--port",
        str(rport),
        "--config",
        write_config(tmp_path, cfg),
        "--workers",
        "2",
        "--log-level",
        "WARNING",
    )
    wait_http(f"http://127.0.0.1:{eport}/health")
    wait_http(f"http://127.0.0.1:{rport}/health")
    base = f"http://127.0.0.1:{rport}"
    wait_servers_ready(base)
    n = 12
    for _ in range(n):  # a new connection each time: the kernel spreads them over the workers
        with httpx.Client() as c:
            r = c.post(base + "/v1/completions", json={"model": "w", "prompt": "x", "max_tokens": 2})
            assert r.status_code == 200
    workers = set()
    for _ in range(8):
        with httpx.Client() as c:
            st = c.get(base + "/kubetier/status").json()
        workers.add(st["worker"])
        # Whichever worker answers reports every worker's requests.
        assert st["models"]["w"]["tiers"]["std"]["completed"] == n
    metrics = httpx.get(base + "/metrics").text
    served = [
        l for l in metrics.splitlines() if l.startswith("kubetier_router_requests_total{") and 'outcome="ok"' in l
    ]
    assert sum(float(l.rsplit(" ", 1)[1]) for l in served) == n
    # Both workers served some (all 12 connections hashed onto one worker: p ~ 0.05%).
    assert len(served) == 2


def test_stock_openai_client_through_the_router(procs, tmp_path):
    import openai

    eport, rport = free_port(), free_port()
    procs.engine(eport, "o", "llama-3.1-8b-h100")
    cfg = {
        "models": [
            {
                "name": "o",
                "profile": "llama-3.1-8b-h100",
                "tiers": [
                    {"name": "fast", "ttftMs": 1000, "tpotMs": 50},
                    {"name": "slow", "ttftMs": 5000, "tpotMs": 200},
                ],
                "servers": [{"url": f"http://127.0.0.1:{eport}", "tier": "fast"}],
            }
        ],
        "apiKeys": [{"key": "sk-slow", "tiers": ["slow"]}],
    }
    procs.start("router", "--port", str(rport), "--config", write_config(tmp_path, cfg), "--log-level", "WARNING")
    wait_http(f"http://127.0.0.1:{eport}/health")
    wait_http(f"http://127.0.0.1:{rport}/health")
    wait_servers_ready(f"http://127.0.0.1:{rport}")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{rport}/v1", api_key="sk-slow", max_retries=0)
    assert [m.id for m in client.models.list()] == ["o"]
    # The slow tier has no server of its own: it spills onto the fast one.
    stream = client.chat.completions.create(
        model="o", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 8
    with pytest.raises(openai.PermissionDeniedError, match="may not use tier 'fast'"):
        client.completions.create(model="o", prompt="x", max_tokens=2, extra_headers={"X-Kubetier-Tier": "fast"})
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)


def test_completions_stream_resumes_by_token_ids_on_real_engine_simulators(procs, tmp_path):
    """An engine that cuts every stream after 10 tokens: the router resumes on the other
    from the prompt's ids plus the generated ids (vLLM's return_token_ids, which the engine
    simulator implements), and the client reads exactly the tokens an unbroken stream has:
    the simulator's words depend on the absolute position when token ids are returned."""
    victim, spare = free_port(), free_port()
    procs.engine(victim, "k", "llama-3.1-8b-h100", "--abort-after-tokens", "10")
    procs.engine(spare, "k", "llama-3.1-8b-h100")
    rport = free_port()
    tier = [{"name": "std", "ttftMs": 2000, "tpotMs": 100}]
    cfg = {
        "models": [
            {
                "name": "k",
                "profile": "llama-3.1-8b-h100",
                "tiers": tier,
                "servers": [
                    {"url": f"http://127.0.0.1:{spare}", "tier": "std", "id": "a-spare"},
                    {"url": f"http://127.0.0.1:{victim}", "tier": "std", "id": "z-victim"},  # tried first
                ],
            }
        ]
    }
    procs.start("router", "--port", str(rport), "--config", write_config(tmp_path, cfg), "--log-level", "WARNING")
    for p in (victim, spare, rport):
        wait_http(f"http://127.0.0.1:{p}/health")
    base = f"http://127.0.0.1:{rport}"
    wait_servers_ready(base)
    body = {
        "model": "k",
        "prompt": "tell me a story about routers",
        "max_tokens": 40,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    through = httpx.post(base + "/v1/completions", json=body, timeout=30)
    direct = httpx.post(f"http://127.0.0.1:{spare}/v1/completions", json={**body, "return_token_ids": True}, timeout=30)

    def parse(text):
        evs = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        words = "".join(e["choices"][0]["text"] for e in evs if e.get("choices"))
        return evs, words

    evs, words = parse(through.text)
    devs, dwords = parse(direct.text)
    assert "error" not in through.text and through.text.rstrip().endswith("data: [DONE]")
    assert words == dwords and len(words.split()) == 40  # no token twice, none lost
    assert len({e["id"] for e in evs}) == 1  # one chunk id throughout
    assert evs[-1]["usage"] == devs[-1]["usage"]  # the original prompt plus all 40 tokens
    st = httpx.get(base + "/kubetier/status").json()["models"]["k"]["tiers"]["std"]
    assert st["migrations"] == 1 and st["completed"] == 1, st
