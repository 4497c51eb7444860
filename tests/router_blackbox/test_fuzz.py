"""Fuzzing the router's JSON handlers and its HTTP front with hypothesis: any input is
either served or refused with a 4xx in OpenAI's shape; never a 500, never an exception
other than the router's own ``ClientError``, deep nesting included. Runs in ``make unit``."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetier.lean_http import Limits, port_of, start_server
from kubetier.lean_http.errors import openai_error_body
from kubetier.router.app import Router
from kubetier.router.config import parse_config
from kubetier.router.errors import ClientError
from kubetier.router.parsing import check_generation_fields, count_prompt_tokens, parse_body
from kubetier.router.resume import build_resume_body

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
# Bodies shaped like requests, with any value in any field.
fields = st.sampled_from(
    ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "prompt_tokens"]
)
messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["user", "assistant", "system", "robot"]) | json_values,
            "content": st.text(max_size=20)
            | st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "type": st.sampled_from(["text", "image_url", "file", "x"]) | json_values,
                        "text": json_values,
                        "image_url": json_values,
                    },
                )
                | json_values,
                max_size=3,
            )
            | json_values,
            "name": json_values,
        },
    )
    | json_values,
    max_size=3,
)
bodies = st.dictionaries(fields, json_values, max_size=6) | st.fixed_dictionaries(
    {"model": st.just("m")},
    optional={
        "messages": messages,
        "prompt": json_values | st.text(max_size=30) | st.lists(st.integers(0, 100), max_size=5),
        "max_tokens": json_values,
        "stream": json_values,
    },
)


def _only_client_errors(fn, *args):
    try:
        return fn(*args)
    except ClientError as exc:
        assert 400 <= exc.status < 500
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies | json_values, chat=st.booleans())
def test_json_handlers_accept_or_refuse_with_4xx(body, chat):
    raw = json.dumps(body).encode()
    parsed = _only_client_errors(parse_body, raw)
    if parsed is None:
        return
    if _only_client_errors(check_generation_fields, parsed) is None:
        return
    n = _only_client_errors(count_prompt_tokens, parsed, chat)
    if n is not None:
        assert isinstance(n, int) and n >= 0
        sent = b'data: {"choices":[{"index":0,"text":" a","token_ids":[5]}]}\n\n'
        build_resume_body(parsed, chat, sent)  # must not raise on anything the router accepted


@pytest.mark.parametrize("depth", [10, 1000, 100_000])
def test_deep_nesting_is_a_400(depth):
    for raw in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        with pytest.raises(ClientError) as e:
            body = parse_body(raw)
            check_generation_fields(body)
        assert e.value.status == 400


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_as_body(raw):
    parsed = _only_client_errors(parse_body, raw)  # a non-4xx error fails inside
    assert parsed is None or isinstance(parsed, dict), f"parse_body returned {type(parsed).__name__}"


# ----------------------------------------------------------------------------- the HTTP front


class _Front:
    """The router (and a tiny engine) on a uvloop loop in a background thread."""

    def __init__(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        async def engine(req, res):
            if req.path in ("/health", "/metrics"):
                res.send(200, b"", content_type="text/plain")
                return
            body = json.loads(req.body)
            if body.get("stream"):
                res.start_stream(200)
                res.write(b'data: {"id":"x","choices":[{"index":0,"text":" a"}]}\n\ndata: [DONE]\n\n')
                res.end()
            else:
                res.send_json(
                    200, {"id": "x", "choices": [{"index": 0, "text": " a"}], "usage": {"completion_tokens": 1}}
                )

        self.engine = await start_server(engine, "127.0.0.1", 0)
        cfg = parse_config(
            {
                "models": [
                    {
                        "name": "m",
                        "profile": "llama-3.1-8b-h100",
                        "tiers": [{"name": "t", "ttftMs": 1000, "tpotMs": 100}],
                        "servers": [{"url": f"http://127.0.0.1:{port_of(self.engine)}", "tier": "t"}],
                    }
                ],
                "apiKeys": [{"key": "k", "tiers": ["t"]}],
            }
        )
        self.router = Router(cfg, access_log=False, scrape_interval_s=0.5)
        self.router.start()
        limits = Limits(max_body_bytes=64 * 1024, request_timeout_s=2.0)
        self.front = await start_server(
            self.router.handle,
            "127.0.0.1",
            0,
            limits=limits,
            head_check=self.router.head_check,
            error_body_fn=openai_error_body,
        )
        self.port = port_of(self.front)


@pytest.fixture(scope="module")
def front():
    return _Front()


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            out.append(b)
    return b"".join(out)


header_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=126, exclude_characters=":"), min_size=1, max_size=20
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS", "DELETE"]),
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/models/m", "/metrics", "/x"])
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(lambda t: "/" + t),
    headers=st.lists(st.tuples(header_text, header_text), max_size=5),
    body=bodies.map(lambda b: json.dumps(b).encode()) | st.binary(max_size=100),
    auth=st.sampled_from(["Bearer k", "Bearer wrong", "", "Basic k"]),
    ctype=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""]),
)
def test_http_front_never_answers_500(front, method, path, headers, body, auth, ctype):
    h = [("host", "x"), ("connection", "close"), ("content-length", str(len(body)))]
    if auth:
        h.append(("authorization", auth))
    if ctype:
        h.append(("content-type", ctype))
    h += [(k, v) for k, v in headers if k.lower() not in ("content-length", "transfer-encoding", "connection", "host")]
    front.router.throttle._state.clear()  # the fuzzer's bad keys must not block the address
    req = f"{method} {path} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in h).encode() + b"\r\n" + body
    resp = _exchange(front.port, req)
    assert resp.startswith(b"HTTP/1.1 "), resp[:100]
    status = int(resp.split(b" ", 2)[1])
    assert status < 500 or status in (502, 503, 504), resp[:300]
    if status >= 400 and method != "HEAD":
        payload = resp.split(b"\r\n\r\n", 1)[1]
        err = json.loads(payload)["error"]
        assert isinstance(err["code"], str) and err["message"]
