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
        "models": [
            {
                "name": "m",
                "profile": "llama-3.1-8b-h100",
                "tiers": [
                    {"name": "fast", "ttftMs": 300, "tpotMs": 30},
                    {"name": "slow", "ttftMs": 5000, "tpotMs": 200},
                ],
                "servers": [{"url": "http://127.0.0.1:9001", "tier": "fast"}],
            }
        ],
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


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["models"][0]["servers"][0].update(tier="gold"), "models[0].servers[0].tier: 'gold' is not a tier"),
        (lambda c: c["models"][0]["servers"][0].update(url="https://x:1"), "models[0].servers[0].url"),
        (lambda c: c["models"][0]["tiers"][1].pop("tpotMs"), "models[0].tiers[1].tpotMs: required"),
        (lambda c: c["models"][0].update(profile="no-such-profile"), "models[0].profile"),
        (lambda c: c.update(routing={"kind": "random"}), "routing.kind"),
        (lambda c: c.update(apiKeys=[{"tiers": ["fast"]}]), "apiKeys[0]: needs 'key' or 'keyEnv'"),
        # typos are refused, not silently replaced by the default
        (lambda c: c["models"][0]["tiers"][1].update(onlate="queue"), "models[0].tiers[1].onlate: unknown field"),
        (lambda c: c["models"][0].update(maxPromptToken=10), "models[0].maxPromptToken: unknown field"),
        (lambda c: c["models"][0]["servers"][0].update(ID="a"), "models[0].servers[0].ID: unknown field"),
        (lambda c: c.update(routing={"kind": "slo", "scaleUpSecond": 5}), "routing.scaleUpSecond: unknown field"),
        (
            lambda c: c.update(apiKeys=[{"key": "k", "tiers": ["fast"], "model": ["m"]}]),
            "apiKeys[0].model: unknown field",
        ),
    ],
)
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


def test_resume_body_lowers_min_tokens_with_max_tokens():
    # vLLM refuses min_tokens > max_tokens: a resumed long stream must ask for what is left.
    sent = _events(" a", " b", " c")
    body, _ = build_resume_body({"model": "m", "prompt": "P", "max_tokens": 10, "min_tokens": 10}, False, sent)
    assert json.loads(body)["min_tokens"] == 7 and json.loads(body)["max_tokens"] == 7
    body, _ = build_resume_body({"model": "m", "prompt": "P", "max_tokens": 10, "min_tokens": 2}, False, sent)
    assert json.loads(body)["min_tokens"] == 0


def test_resume_body_for_chat_continues_the_assistant_message():
    sent = _events(" x", " y", chat=True)
    assert streamed_text(sent) == (" x y", 2)  # the role chunk is no token
    body, n = build_resume_body(
        {"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 5}, True, sent
    )
    d = json.loads(body)
    assert n == 2 and d["max_tokens"] == 3
    assert d["messages"][-1] == {"role": "assistant", "content": " x y"}
    assert d["continue_final_message"] is True and d["add_generation_prompt"] is False


def test_prompt_estimate_and_errors():
    assert estimate_prompt_tokens({"prompt": "abcdefgh"}, False) == 2
    assert estimate_prompt_tokens({"prompt": [1, 2, 3]}, False) == 3
    assert estimate_prompt_tokens({"prompt": "x", "prompt_tokens": 500}, False) == 1  # a client's figure is ignored
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": "abcd"}]}, True) == 5
    with pytest.raises(Exception, match="'prompt' is required"):
        estimate_prompt_tokens({}, False)
    with pytest.raises(Exception, match="messages"):
        estimate_prompt_tokens({"messages": []}, True)


def test_engine_metrics_parsing():
    text = (
        b'# HELP x\nvllm:num_requests_running{model_name="m"} 7\n'
        b'vllm:num_requests_waiting{model_name="m"} 2\nvllm:gpu_cache_usage_perc{model_name="m"} 0.25\n'
    )
    assert parse_engine_metrics(text) == (9, 0.25)
    assert parse_engine_metrics(b"other_metric 1\n") is None


def _routing_cm(access=None) -> dict:
    profile = load_profile("llama-3.1-8b-h100").to_dict()
    return {
        "metadata": {"name": "chat-routing", "namespace": "team-a", "labels": {"kubetier.io/routing-config": "true"}},
        "data": {
            "routing.json": json.dumps(
                {
                    "model": "llama",
                    "namespace": "team-a",
                    "service": "chat",
                    "port": 8000,
                    "profile": profile,
                    "tiers": [
                        {
                            "name": "interactive",
                            "ttftMs": 300,
                            "tpotMs": 30,
                            "priority": 100,
                            "meanOutputTokens": 256,
                            "onLate": "reject",
                        },
                        {
                            "name": "batch",
                            "ttftMs": 9000,
                            "tpotMs": 150,
                            "priority": 1,
                            "meanOutputTokens": 256,
                            "onLate": "queue",
                        },
                    ],
                    "access": access or [],
                }
            )
        },
    }


def _pod(name, tier, ready=True, deleting=False, ip="10.0.0.5", local=None, service="chat") -> dict:
    meta = {
        "name": name,
        "namespace": "team-a",
        "labels": {
            "app.kubernetes.io/managed-by": "kubetier",
            "kubetier.io/service": service,
            "kubetier.io/tier": tier,
            "kubetier.io/role": "serving",
        },
        "annotations": {"kubetier.io/local-endpoint": local} if local else {},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_discovery_builds_models_servers_and_keys():
    secret = {"data": {"api-key": base64.b64encode(b"sk-a").decode()}}
    cms = [
        _routing_cm(access=[{"secretName": "team-a-key", "tiers": ["batch"]}]),
        {"metadata": {"name": "broken-routing", "namespace": "x"}, "data": {"routing.json": "{not json"}},
    ]
    pods = [
        _pod("p1", "interactive"),
        _pod("p2", "batch", ready=False),
        _pod("p3", "batch", deleting=True),
        _pod("p4", "batch", service="other"),
    ]
    c = build_config(cms, pods, {("team-a", "team-a-key"): secret})
    assert list(c.models) == ["llama"]  # the broken ConfigMap is skipped
    m = c.models["llama"]
    assert not m.public
    servers = {s.server_id: s for s in m.servers}
    assert set(servers) == {"team-a/p1", "team-a/p2", "team-a/p3"}
    assert (servers["team-a/p1"].host, servers["team-a/p1"].port, servers["team-a/p1"].ready) == (
        "10.0.0.5",
        8000,
        True,
    )
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


async def test_upstream_sink_gets_reads_while_the_reader_waits_and_wakes_it_on_demand():
    """The relay's hot path: bytes go to the sink from the protocol callback; the reader
    wakes only at the end, when the sink returns False, or when the sink raises."""

    async def handler(req, res):
        res.start_stream(200)
        for i in range(4):
            res.write(b"data: %d\n\n" % i)
            await asyncio.sleep(0.02)
        res.end()

    server = await start_server(handler, "127.0.0.1", 0)
    pool = UpstreamPool("127.0.0.1", port_of(server))
    try:
        # Keep feeding: every event reaches the sink and the reader wakes once, at the end.
        r = await pool.request("GET", "/")
        fed: list[bytes] = []
        r.set_sink(lambda b: fed.append(b) or True)
        wakes = 0
        got = b""
        while (data := r.read_nowait()) != b"":
            if data is None:
                await r.wait_readable(5)
                wakes += 1
            else:
                got += data
        r.close()
        assert got + b"".join(fed) == b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n"
        assert len(fed) >= 2 and wakes < 4
        # A sink that returns False wakes the reader after each read it handled.
        r = await pool.request("GET", "/")
        seen: list[bytes] = []
        r.set_sink(lambda b: seen.append(b) and False)
        await r.wait_readable(5)
        assert seen or r.read_nowait()  # the first read went to the sink or is buffered
        r.close()
        # A sink that raises: the exception comes out of read_nowait, in the reader.
        r = await pool.request("GET", "/")

        def boom(b):
            raise RuntimeError("sink failed")

        r.set_sink(boom)
        with pytest.raises(RuntimeError, match="sink failed"):
            while True:
                if r.read_nowait() is None:
                    await r.wait_readable(5)
        r.close()
    finally:
        pool.close()
        server.close()


async def test_discovery_reads_objects_through_the_kube_layer():
    """The same path as the cluster: HTTP lists through kubetier.kube -> build_config
    (checks the API field names and selectors the pure builder relies on)."""
    import httpx

    from kubetier.kube import KubeClient
    from kubetier.router.discovery import ClusterSource

    cm = _routing_cm(access=[{"secretName": "k", "tiers": ["interactive"]}])
    pod = _pod("p1", "batch")
    pod["metadata"]["name"], pod["metadata"]["namespace"] = "p1", "team-a"
    pod["status"] = {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]}
    secret = {"data": {"api-key": base64.b64encode(b"sk-z").decode()}}
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.url.params.get("labelSelector")))
        if request.url.path == "/api/v1/configmaps":
            return httpx.Response(200, json={"apiVersion": "v1", "items": [cm], "metadata": {"resourceVersion": "1"}})
        if request.url.path == "/api/v1/pods":
            return httpx.Response(200, json={"apiVersion": "v1", "items": [pod], "metadata": {"resourceVersion": "2"}})
        if request.url.path == "/api/v1/namespaces/team-a/secrets/k":
            return httpx.Response(200, json=secret)
        return httpx.Response(404, json={})

    api = KubeClient(httpx.AsyncClient(base_url="http://kube", transport=httpx.MockTransport(handler)))
    try:
        c = build_config(*await ClusterSource(None, api).snapshot())
    finally:
        await api.aclose()
    assert ("/api/v1/configmaps", "kubetier.io/routing-config=true") in seen
    assert any(path == "/api/v1/pods" and "kubetier.io/role=serving" in (sel or "") for path, sel in seen)
    s = c.models["llama"].servers[0]
    assert (s.server_id, s.host, s.port, s.tier, s.ready) == ("team-a/p1", "10.1.2.3", 8000, "batch", True)
    assert c.keys == {"sk-z": {"llama": frozenset({"interactive"})}}


async def test_router_follows_discovery_updates_in_process():
    """Discovery output drives the live router: a model appears, a draining pod gets no
    traffic, the model disappears (404)."""
    import httpx

    from kubetier.router.app import Router
    from kubetier.router.config import RouterConfig

    hits: dict[int, int] = {}

    def engine(port_box):
        async def handler(req, res):
            if req.path == "/health":
                res.send(200, b"")
            elif req.path == "/metrics":
                res.send(200, b"", content_type="text/plain")
            else:
                hits[port_box[0]] = hits.get(port_box[0], 0) + 1
                res.start_stream(200)
                for w in ("a", "b"):
                    res.write(b'data: {"choices":[{"index":0,"text":" %s"}]}\n\n' % w.encode())
                res.write(b"data: [DONE]\n\n")
                res.end()

        return handler

    boxes = [[0], [0]]
    engines = [await start_server(engine(b), "127.0.0.1", 0) for b in boxes]
    for b, e in zip(boxes, engines):
        b[0] = port_of(e)
    router = Router(RouterConfig(models={}), scrape_interval_s=0.05)
    router.start()
    front = await start_server(router.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port_of(front)}/v1/completions"
    try:
        pods = [
            _pod("p0", "batch", local=f"127.0.0.1:{boxes[0][0]}"),
            _pod("p1", "batch", local=f"127.0.0.1:{boxes[1][0]}", deleting=True),
        ]
        router.update_models(build_config([_routing_cm()], pods, {}, local_endpoints=True))
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(3):
                r = await client.post(url, json={"model": "llama", "prompt": "x", "stream": True})
                assert r.status_code == 200 and r.text.count('"text"') == 2
            assert hits == {boxes[0][0]: 3}  # the draining pod got nothing
            router.update_models(build_config([], [], {}, local_endpoints=True))
            r = await client.post(url, json={"model": "llama", "prompt": "x"})
            assert r.status_code == 404
    finally:
        front.close()
        await router.stop()
        for e in engines:
            e.close()


async def test_wait_queue_admits_when_capacity_frees_and_rejects_when_late():
    from kubetier.policy.latency import LatencyModel
    from kubetier.policy.routing import TierSLO
    from kubetier.router.config import ModelSpec, ServerSpec
    from kubetier.router.fleet import ModelFleet, Rejected
    from kubetier.router.metrics import RouterMetrics

    d = load_profile("llama-3.1-8b-h100").to_dict()
    d["maxNumSeqs"] = 1
    spec = ModelSpec(
        "m",
        LatencyModel.from_dict(d),
        [
            TierSLO("t", ttft_ms=400, tpot_ms=100, priority=1, mean_output_tokens=16),
        ],
        [ServerSpec("s", "127.0.0.1", 9, "t")],
    )
    fleet = ModelFleet(spec, RouterMetrics("test"))
    import time as _t

    up, spilled = await fleet.acquire("t", 100, _t.monotonic())
    assert up.spec.server_id == "s" and not spilled
    waiting = asyncio.ensure_future(fleet.acquire("t", 100, _t.monotonic()))
    await asyncio.sleep(0.05)
    assert not waiting.done() and fleet.metrics.tally("m", "t").waiting == 1
    fleet.release("s", 100, 5, prefilled=False)  # capacity frees: the waiter is admitted
    up2, _ = await asyncio.wait_for(waiting, 1)
    assert up2.spec.server_id == "s" and fleet.metrics.tally("m", "t").waiting == 0
    # Nobody releases now: the next request waits out its TTFT budget, then is refused.
    t0 = _t.monotonic()
    with pytest.raises(Rejected):
        await asyncio.wait_for(fleet.acquire("t", 100, t0), 2)
    assert 0.2 < _t.monotonic() - t0 < 1.0


async def test_single_failing_server_gives_502_quickly_not_an_endless_wait():
    import time as _t

    import httpx

    from kubetier.router.app import Router

    async def engine(req, res):
        if req.path in ("/health", "/metrics"):
            res.send(200, b"", content_type="text/plain")
        else:
            res.send(500, b'{"error": "boom"}')

    eng = await start_server(engine, "127.0.0.1", 0)
    config = parse_config(
        {
            "models": [
                {
                    "name": "m",
                    "profile": "llama-3.1-8b-h100",
                    "tiers": [{"name": "q", "ttftMs": 500, "tpotMs": 100, "onLate": "queue"}],
                    "servers": [{"url": f"http://127.0.0.1:{port_of(eng)}", "tier": "q"}],
                }
            ]
        }
    )
    router = Router(config)
    router.start()
    front = await start_server(router.handle, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            t0 = _t.monotonic()
            r = await client.post(
                f"http://127.0.0.1:{port_of(front)}/v1/completions", json={"model": "m", "prompt": "x"}
            )
            assert r.status_code == 502 and "answered 500" in r.json()["error"]["message"]
            assert _t.monotonic() - t0 < 2.0
    finally:
        front.close()
        await router.stop()
        eng.close()


async def test_mid_stream_failure_without_another_server_ends_with_an_error_event():
    import httpx

    from kubetier.router.app import Router

    async def engine(req, res):
        if req.path in ("/health", "/metrics"):
            res.send(200, b"", content_type="text/plain")
            return
        res.start_stream(200)
        for w in (b"a", b"b"):
            res.write(b'data: {"choices":[{"index":0,"text":" %s"}]}\n\n' % w)
            await asyncio.sleep(0.01)
        res.abort()  # the engine dies mid-stream

    eng = await start_server(engine, "127.0.0.1", 0)
    config = parse_config(
        {
            "models": [
                {
                    "name": "m",
                    "profile": "llama-3.1-8b-h100",
                    "tiers": [{"name": "t", "ttftMs": 1000, "tpotMs": 100}],
                    "servers": [{"url": f"http://127.0.0.1:{port_of(eng)}", "tier": "t"}],
                }
            ]
        }
    )
    router = Router(config)
    router.start()
    front = await start_server(router.handle, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(
                f"http://127.0.0.1:{port_of(front)}/v1/completions",
                json={"model": "m", "prompt": "x", "max_tokens": 10, "stream": True},
            )
        events = [l[6:] for l in r.text.splitlines() if l.startswith("data: ")]
        assert [json.loads(e)["choices"][0]["text"] for e in events[:2]] == [" a", " b"]
        err = json.loads(events[-1])["error"]
        assert "no server could resume it" in err["message"] and "[DONE]" not in r.text
        st = router.status()["models"]["m"]["tiers"]["t"]
        assert st["failed"] == 1 and st["migrations"] == 1
    finally:
        front.close()
        await router.stop()
        eng.close()


async def test_a_waiting_request_whose_client_left_gives_up_its_place():
    import time as _t

    from kubetier.policy.latency import LatencyModel
    from kubetier.policy.routing import TierSLO
    from kubetier.router.config import ModelSpec, ServerSpec
    from kubetier.router.fleet import ClientGone, ModelFleet
    from kubetier.router.metrics import RouterMetrics

    d = load_profile("llama-3.1-8b-h100").to_dict()
    d["maxNumSeqs"] = 1
    spec = ModelSpec(
        "m",
        LatencyModel.from_dict(d),
        [
            TierSLO("t", ttft_ms=5000, tpot_ms=100, priority=1, mean_output_tokens=16, on_late="queue"),
        ],
        [ServerSpec("s", "127.0.0.1", 9, "t")],
    )
    fleet = ModelFleet(spec, RouterMetrics("test"))
    await fleet.acquire("t", 100, _t.monotonic())  # the only slot
    left = {"gone": False}
    waiting = asyncio.ensure_future(fleet.acquire("t", 100, _t.monotonic(), gone=lambda: left["gone"]))
    await asyncio.sleep(0.05)
    left["gone"] = True
    fleet.pump()
    with pytest.raises(ClientGone):
        await asyncio.wait_for(waiting, 1)
    assert fleet.metrics.tally("m", "t").waiting == 0
    fleet.release("s", 100, 1, prefilled=True)
    assert fleet.policy.server("s").running == 0  # the departed request never took the slot


def test_router_help_explains_tier_selection():
    from kubetier.router.main import build_parser

    text = build_parser().format_help()
    for needle in ("X-Kubetier-Tier", "loosest tier", "403", "429", "503", "--admin-port", "--key-rpm"):
        assert needle in text, needle
