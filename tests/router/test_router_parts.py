"""Fast tests of the router's parts: config errors, stream resumption bodies, engine
metrics parsing, cluster discovery from plain objects, and the upstream client against
the real lean HTTP server in-process."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
import uvloop

from kubetier.lean_http import port_of, start_server
from kubetier.lean_http.client import UpstreamError, UpstreamPool
from kubetier.policy.latency import load_profile
from kubetier.router.app import build_resume_body, estimate_prompt_tokens, streamed_text
from kubetier.router.config import ConfigError, parse_config
from kubetier.router.discovery import build_config
from kubetier.router.fleet import parse_engine_metrics


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


def cfg(**over) -> dict:
    c = {
        "models": [{
            "name": "m", "profile": "llama-3.1-8b-h100",
            "tiers": [{"name": "fast", "ttftMs": 300, "tpotMs": 30}, {"name": "slow", "ttftMs": 5000, "tpotMs": 200}],
            "servers": [{"url": "http://127.0.0.1:9001", "tier": "fast"}],
        }],
    }
    c.update(over)
    return c


def test_config_parses_and_keys_grant_tiers():
    c = parse_config(cfg(apiKeys=[{"key": "k1", "tiers": ["slow"]}]))
    m = c.models["m"]
    assert [t.name for t in m.tiers] == ["fast", "slow"] and not m.public
    assert m.servers[0].host == "127.0.0.1" and m.servers[0].port == 9001
    assert c.keys == {"k1": {"*": frozenset({"slow"})}}
    assert parse_config(cfg()).models["m"].public


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["models"][0]["servers"][0].update(tier="gold"), "models[0].servers[0].tier: 'gold' is not a tier"),
    (lambda c: c["models"][0]["servers"][0].update(url="https://x:1"), "models[0].servers[0].url"),
    (lambda c: c["models"][0]["tiers"][1].pop("tpotMs"), "models[0].tiers[1].tpotMs: required"),
    (lambda c: c["models"][0].update(profile="no-such-profile"), "models[0].profile"),
    (lambda c: c.update(routing={"kind": "random"}), "routing.kind"),
    (lambda c: c.update(apiKeys=[{"tiers": ["fast"]}]), "apiKeys[0]: needs 'key' or 'keyEnv'"),
])
def test_config_errors_name_the_field(mutate, message):
    c = cfg()
    mutate(c)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(c)


def _events(*pieces: str, chat: bool = False) -> list[bytes]:
    out = []
    if chat:
        out.append(b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n')
    for p in pieces:
        c = {"delta": {"content": p}} if chat else {"text": p}
        out.append(b"data: " + json.dumps({"choices": [dict(index=0, **c)]}).encode() + b"\n\n")
    return [b"".join(out)]


def test_resume_body_for_completions_appends_streamed_text():
    sent = _events(" a", " b", " c")
    assert streamed_text(sent) == (" a b c", 3)
    body, n = build_resume_body({"model": "m", "prompt": "P", "max_tokens": 10, "prompt_tokens": 7}, False, sent)
    assert n == 3
    assert json.loads(body) == {"model": "m", "prompt": "P a b c", "max_tokens": 7, "prompt_tokens": 10}
    # Nothing left to generate: the router just closes the stream.
    assert build_resume_body({"model": "m", "prompt": "P", "max_tokens": 3}, False, sent) == (None, 3)
    # Token-id prompts cannot be extended with text.
    assert build_resume_body({"model": "m", "prompt": [1, 2]}, False, sent) is None


def test_resume_body_for_chat_continues_the_assistant_message():
    sent = _events(" x", " y", chat=True)
    assert streamed_text(sent) == (" x y", 2)  # the role chunk is no token
    body, n = build_resume_body({"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 5}, True, sent)
    d = json.loads(body)
    assert n == 2 and d["max_tokens"] == 3
    assert d["messages"][-1] == {"role": "assistant", "content": " x y"}
    assert d["continue_final_message"] is True and d["add_generation_prompt"] is False


def test_prompt_estimate_and_errors():
    assert estimate_prompt_tokens({"prompt": "abcdefgh"}, False) == 2
    assert estimate_prompt_tokens({"prompt": [1, 2, 3]}, False) == 3
    assert estimate_prompt_tokens({"prompt": "x", "prompt_tokens": 500}, False) == 500
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": "abcd"}]}, True) == 5
    with pytest.raises(Exception, match="'prompt' is required"):
        estimate_prompt_tokens({}, False)
    with pytest.raises(Exception, match="messages"):
        estimate_prompt_tokens({"messages": []}, True)


def test_engine_metrics_parsing():
    text = (b'# HELP x\nvllm:num_requests_running{model_name="m"} 7\n'
            b'vllm:num_requests_waiting{model_name="m"} 2\nvllm:gpu_cache_usage_perc{model_name="m"} 0.25\n')
    assert parse_engine_metrics(text) == (9, 0.25)
    assert parse_engine_metrics(b"other_metric 1\n") is None


def _routing_cm(access=None) -> dict:
    profile = load_profile("llama-3.1-8b-h100").to_dict()
    return {
        "metadata": {"name": "chat-routing", "namespace": "team-a", "labels": {"kubetier.io/routing-config": "true"}},
        "data": {"routing.json": json.dumps({
            "model": "llama", "namespace": "team-a", "service": "chat", "port": 8000, "profile": profile,
            "tiers": [{"name": "interactive", "ttftMs": 300, "tpotMs": 30, "priority": 100, "meanOutputTokens": 256, "onLate": "reject"},
                      {"name": "batch", "ttftMs": 9000, "tpotMs": 150, "priority": 1, "meanOutputTokens": 256, "onLate": "queue"}],
            "access": access or [],
        })},
    }


def _pod(name, tier, ready=True, deleting=False, ip="10.0.0.5", local=None, service="chat") -> dict:
    meta = {"name": name, "namespace": "team-a",
            "labels": {"app.kubernetes.io/managed-by": "kubetier", "kubetier.io/service": service,
                       "kubetier.io/tier": tier, "kubetier.io/role": "serving"},
            "annotations": {"kubetier.io/local-endpoint": local} if local else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_discovery_builds_models_servers_and_keys():
    secret = {"data": {"api-key": base64.b64encode(b"sk-a").decode()}}
    cms = [_routing_cm(access=[{"secretName": "team-a-key", "tiers": ["batch"]}]),
           {"metadata": {"name": "broken-routing", "namespace": "x"}, "data": {"routing.json": "{not json"}}]
    pods = [_pod("p1", "interactive"), _pod("p2", "batch", ready=False), _pod("p3", "batch", deleting=True),
            _pod("p4", "batch", service="other")]
    c = build_config(cms, pods, {("team-a", "team-a-key"): secret})
    assert list(c.models) == ["llama"]  # the broken ConfigMap is skipped
    m = c.models["llama"]
    assert not m.public
    servers = {s.server_id: s for s in m.servers}
    assert set(servers) == {"team-a/p1", "team-a/p2", "team-a/p3"}
    assert (servers["team-a/p1"].host, servers["team-a/p1"].port, servers["team-a/p1"].ready) == ("10.0.0.5", 8000, True)
    assert servers["team-a/p2"].ready is False and servers["team-a/p3"].draining is True
    assert c.keys == {"sk-a": {"llama": frozenset({"batch"})}}


def test_discovery_local_endpoints_use_the_annotation():
    pods = [_pod("p1", "interactive", local="127.0.0.1:18001"), _pod("p2", "batch")]
    m = build_config([_routing_cm()], pods, {}, local_endpoints=True).models["llama"]
    assert [(s.server_id, s.host, s.port) for s in m.servers] == [("team-a/p1", "127.0.0.1", 18001)]
    assert m.public  # no access entries: open


async def test_upstream_client_streams_reuses_connections_and_reports_failures():
    async def handler(req, res):
        if req.path == "/stream":
            res.start_stream(200)
            for i in range(3):
                res.write(b"data: %d\n\n" % i)
                await asyncio.sleep(0.01)
            res.end()
        elif req.path == "/cut":
            res.start_stream(200)
            res.write(b"data: 0\n\n")
            await asyncio.sleep(0.01)
            res.abort()
        else:
            res.send(200, req.body)

    server = await start_server(handler, "127.0.0.1", 0)
    port = port_of(server)
    pool = UpstreamPool("127.0.0.1", port)
    try:
        r = await pool.request("POST", "/echo", b"hello")
        assert r.status == 200 and await r.read_all() == b"hello"
        r.close()
        assert len(pool._idle) == 1
        r = await pool.request("GET", "/stream")
        got = b""
        while chunk := await r.read_some(5):
            got += chunk
        r.close()
        assert got == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert len(pool._idle) == 1  # the same connection came back
        r = await pool.request("GET", "/cut")
        with pytest.raises(UpstreamError) as exc:
            while await r.read_some(5):
                pass
        assert exc.value.phase == "body"
        r.close()
    finally:
        pool.close()
        server.close()
    with pytest.raises(UpstreamError) as exc:
        await UpstreamPool("127.0.0.1", port, connect_timeout_s=1).request("GET", "/")
    assert exc.value.phase == "connect"


async def test_upstream_client_times_out_a_stalled_stream():
    async def handler(req, res):
        res.start_stream(200)
        res.write(b"data: 0\n\n")
        await asyncio.sleep(1.0)
        res.end()

    server = await start_server(handler, "127.0.0.1", 0)
    pool = UpstreamPool("127.0.0.1", port_of(server))
    try:
        r = await pool.request("GET", "/")
        assert await r.read_some(0.2) == b"data: 0\n\n"
        with pytest.raises(UpstreamError, match="stalled"):
            await r.read_some(0.2)
        r.close()
    finally:
        pool.close()
        server.close()
