"""The lean HTTP server over real loopback sockets: keep-alive, pipelining, limits,
streaming with backpressure, disconnects, and errors as JSON bodies."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from kubetier.lean_http import Limits, Request, Response, error_body


def get(path: str = "/", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def echo(request: Request, response: Response) -> None:
    response.send_json(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": request.body.decode(),
            "client_host": request.client[0] if request.client else None,
        },
    )


async def test_full_response_and_keep_alive(serve, connect):
    port = await serve(echo)
    client = await connect(port)
    client.send(get("/a?x=1", "X-Thing: One\r\n"))
    first = await client.response()
    client.send(post("/b", b"hello"))
    second = await client.response()

    assert first.status == 200
    assert first.headers["content-type"] == "application/json"
    assert int(first.headers["content-length"]) == len(first.body)
    assert "connection" not in first.headers  # kept alive
    got = json.loads(first.body)
    assert got["method"] == "GET" and got["path"] == "/a" and got["query"] == "x=1"
    assert got["headers"]["x-thing"] == "One"  # names lower-cased, values kept
    assert got["client_host"] == "127.0.0.1"
    assert json.loads(second.body)["body"] == "hello"


async def test_pipelined_requests_are_answered_in_order(serve, connect):
    async def slow_first(request: Request, response: Response) -> None:
        if request.path == "/1":
            await asyncio.sleep(0.1)  # a later request must not overtake this one
        response.send(200, request.path.encode(), content_type="text/plain")

    port = await serve(slow_first)
    client = await connect(port)
    client.send(get("/1") + post("/2", b"xx") + get("/3"))
    got = await client.responses(3)
    assert [r.body for r in got] == [b"/1", b"/2", b"/3"]


async def test_connection_close_request_is_honoured(serve, connect):
    port = await serve(echo)
    client = await connect(port)
    client.send(get("/", "Connection: close\r\n"))
    response = await client.response()
    assert response.headers.get("connection") == "close"
    assert await client.closed_by_server()


async def test_http10_gets_a_close_delimited_response(serve, connect):
    port = await serve(echo)
    client = await connect(port)
    client.send(b"GET /old HTTP/1.0\r\n\r\n")
    response = await client.response()
    assert response.status == 200 and json.loads(response.body)["path"] == "/old"
    assert await client.closed_by_server()


async def test_malformed_request_gets_400_json(serve, connect):
    port = await serve(echo)
    client = await connect(port)
    client.send(b"NOT A REQUEST\r\n\r\n")
    response = await client.response()
    assert response.status == 400
    assert json.loads(response.body)["error"]["code"] == 400
    assert await client.closed_by_server()


async def test_body_over_limit_by_content_length_is_413_before_the_body(serve, connect):
    port = await serve(echo, Limits(max_body_bytes=100))
    client = await connect(port)
    # Only the headers are sent: the answer must not wait for a body it will refuse.
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
    response = await client.response()
    assert response.status == 413
    assert "100 bytes" in json.loads(response.body)["error"]["message"]


async def test_chunked_body_over_limit_is_413(serve, connect):
    port = await serve(echo, Limits(max_body_bytes=100))
    client = await connect(port)
    chunk = b"x" * 80
    client.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%b\r\n" % (len(chunk), chunk) * 2
        + b"0\r\n\r\n"
    )
    assert (await client.response()).status == 413


async def test_chunked_body_within_limit_is_reassembled(serve, connect):
    port = await serve(echo)
    client = await connect(port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert json.loads((await client.response()).body)["body"] == "abcde"


async def test_header_limits_give_431(serve, connect):
    port = await serve(echo, Limits(max_header_bytes=1024, max_headers=5))
    big = await connect(port)
    big.send(get("/", f"X-Big: {'a' * 2000}\r\n"))
    assert (await big.response()).status == 431

    many = await connect(port)
    many.send(get("/", "".join(f"X-{i}: v\r\n" for i in range(10))))
    assert (await many.response()).status == 431


async def test_slow_request_times_out_with_408(serve, connect):
    port = await serve(echo, Limits(request_timeout_s=0.2))
    client = await connect(port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")  # headers never finish
    response = await client.response(timeout=3)
    assert response.status == 408
    assert await client.closed_by_server()


async def test_idle_keep_alive_connection_is_closed(serve, connect):
    port = await serve(echo, Limits(keepalive_timeout_s=0.2))
    client = await connect(port)
    client.send(get())
    assert (await client.response()).status == 200
    assert await client.closed_by_server(timeout=3)


async def test_handler_exception_is_500_json_and_connection_survives(serve, connect):
    async def broken(request: Request, response: Response) -> None:
        if request.path == "/boom":
            raise KeyError("nope")
        response.send(200, b"ok", content_type="text/plain")

    port = await serve(broken)
    client = await connect(port)
    client.send(get("/boom"))
    failed = await client.response()
    client.send(get("/fine"))
    fine = await client.response()
    assert failed.status == 500
    assert json.loads(failed.body)["error"]["type"] == "server_error"
    assert "KeyError" in json.loads(failed.body)["error"]["message"]
    assert fine.status == 200 and fine.body == b"ok"


async def test_handler_without_response_is_500(serve, connect):
    async def silent(request: Request, response: Response) -> None:
        return None

    port = await serve(silent)
    client = await connect(port)
    client.send(get())
    assert (await client.response()).status == 500


async def test_stream_is_chunked_and_a_stock_client_reads_it(serve):
    async def sse(request: Request, response: Response) -> None:
        response.start_stream(200, [("x-stream", "yes")])
        for i in range(5):
            response.write(b"data: %d\n\n" % i)
            await response.drain()
        response.write(b"data: [DONE]\n\n")
        response.end()

    port = await serve(sse)
    async with httpx.AsyncClient() as client:
        async with client.stream("GET", f"http://127.0.0.1:{port}/s") as r:
            assert r.headers["transfer-encoding"] == "chunked"
            assert r.headers["content-type"] == "text/event-stream"
            assert r.headers["x-stream"] == "yes"
            lines = [line async for line in r.aiter_lines() if line]
        # The same connection serves the next request after the stream ends.
        again = await client.get(f"http://127.0.0.1:{port}/s")
    assert lines == [f"data: {i}" for i in range(5)] + ["data: [DONE]"]
    assert again.status_code == 200


async def test_each_write_is_one_chunk(serve, connect):
    async def three(request: Request, response: Response) -> None:
        response.start_stream()
        for part in (b"a", b"bb", b"ccc"):
            response.write(part)
        response.end()

    port = await serve(three)
    client = await connect(port)
    client.send(get())
    # Read the raw bytes to see the framing itself.
    raw = b""
    async with asyncio.timeout(5):
        while not raw.endswith(b"0\r\n\r\n"):
            raw += await client.reader.read(4096)
    assert raw.split(b"\r\n\r\n", 1)[1] == b"1\r\na\r\n2\r\nbb\r\n3\r\nccc\r\n0\r\n\r\n"


async def test_client_disconnect_is_seen_mid_stream(serve, connect):
    seen = asyncio.Event()
    callback_fired = []

    async def forever(request: Request, response: Response) -> None:
        response.start_stream()
        response.add_disconnect_callback(lambda: callback_fired.append(True))
        while not response.disconnected:
            response.write(b"data: tick\n\n")
            await asyncio.sleep(0.01)
        seen.set()

    port = await serve(forever)
    client = await connect(port)
    client.send(get())
    await client.reader.read(100)
    client.close()
    await asyncio.wait_for(seen.wait(), 3)
    assert callback_fired == [True]


async def test_drain_waits_while_the_client_does_not_read(serve):
    state = {"paused_waits": 0, "written": 0, "done": False}
    chunk = b"x" * 65536

    async def flood(request: Request, response: Response) -> None:
        response.start_stream(content_type="application/octet-stream")
        for _ in range(200):  # ~13 MB: far more than the socket buffers hold
            response.write(chunk)
            state["written"] += len(chunk)
            before = asyncio.get_running_loop().time()
            await response.drain()
            if asyncio.get_running_loop().time() - before > 0.05:
                state["paused_waits"] += 1
        response.end()
        state["done"] = True

    port = await serve(flood)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(get())
    sock.setblocking(False)
    await asyncio.sleep(0.3)  # the client reads nothing: the handler must be parked
    assert not state["done"]
    assert state["written"] < 200 * len(chunk)
    # Now read everything; the handler resumes and finishes.
    loop = asyncio.get_running_loop()
    received = 0
    async with asyncio.timeout(10):
        while True:
            data = await loop.sock_recv(sock, 1 << 20)
            received += len(data)
            if not data or data.endswith(b"0\r\n\r\n"):
                break
    sock.close()
    assert state["done"]
    assert state["paused_waits"] >= 1
    assert received > 200 * len(chunk)


async def test_stalled_reader_is_cut_off(serve):
    finished = asyncio.Event()
    outcome = {}

    async def flood(request: Request, response: Response) -> None:
        response.start_stream(content_type="application/octet-stream")
        while not response.disconnected:
            response.write(b"y" * 65536)
            await response.drain()
        outcome["disconnected"] = response.disconnected
        finished.set()

    port = await serve(flood, Limits(write_stall_timeout_s=0.2))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(get())
    await asyncio.wait_for(finished.wait(), 5)
    sock.close()
    assert outcome["disconnected"] is True


async def test_write_buffer_cap_cuts_off_a_client_that_never_reads(serve):
    finished = asyncio.Event()
    outcome: dict[str, object] = {}
    cap = 1 << 20
    chunk = 65536
    offered = 1000 * chunk  # 64 MiB: far beyond the cap plus what the kernel buffers

    async def no_drain(request: Request, response: Response) -> None:
        # A handler that never awaits drain() (the per-token path) still cannot make
        # the server buffer without bound.
        response.start_stream(content_type="application/octet-stream")
        written = 0
        while written < offered and not response.disconnected:
            response.write(b"z" * chunk)
            written += chunk
            await asyncio.sleep(0)
        outcome.update(written=written, disconnected=response.disconnected)
        finished.set()

    port = await serve(no_drain, Limits(max_write_buffer_bytes=cap))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(get())
    await asyncio.wait_for(finished.wait(), 5)
    sock.close()
    # The server gave up on the client (with no cap the handler writes all 64 MiB into
    # memory and the connection stays up) ...
    assert outcome["disconnected"] is True
    # ... once the cap, plus what the kernel's socket buffers took, was exceeded.
    assert cap < outcome["written"] < offered // 4, outcome


async def test_exception_mid_stream_truncates_the_stream(serve):
    async def breaks(request: Request, response: Response) -> None:
        response.start_stream()
        response.write(b"data: 1\n\n")
        raise RuntimeError("engine died")

    port = await serve(breaks)
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("GET", f"http://127.0.0.1:{port}/") as r:
                async for _ in r.aiter_bytes():
                    pass


async def test_head_has_headers_but_no_body(serve, connect):
    port = await serve(echo)
    client = await connect(port)
    client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n" + get("/after"))
    # httptools' response parser needs to know it answered HEAD; read raw instead.
    raw = b""
    async with asyncio.timeout(5):
        while raw.count(b"HTTP/1.1 200") < 2 or not raw.endswith(b"}"):
            raw += await client.reader.read(4096)
    head, rest = raw.split(b"\r\n\r\n", 1)
    assert b"content-length:" in head
    assert rest.startswith(b"HTTP/1.1 200 OK")


async def test_expect_100_continue(serve):
    port = await serve(echo)
    async with httpx.AsyncClient() as client:
        r = await client.post(f"http://127.0.0.1:{port}/", content=b"abc", headers={"Expect": "100-continue"})
    # httpx does not wait for the interim answer; the final one must still be right.
    assert r.status_code == 200 and r.json()["body"] == "abc"


def test_error_body_shape():
    body = json.loads(error_body(404, "model 'x' not found", param="model"))
    assert body == {
        "error": {"message": "model 'x' not found", "type": "not_found_error", "param": "model", "code": 404}
    }
    assert json.loads(error_body(503, "loading"))["error"]["type"] == "service_unavailable_error"


def test_limits_refuse_nonsense():
    with pytest.raises(ValueError, match="max_body_bytes"):
        Limits(max_body_bytes=0)
    with pytest.raises(ValueError, match="request_timeout_s"):
        Limits(request_timeout_s=0)


async def test_runs_on_uvloop():
    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_abort_cuts_a_stream_and_fires_disconnect_callbacks(serve):
    fired = []

    async def cut(request: Request, response: Response) -> None:
        response.start_stream()
        response.add_disconnect_callback(lambda: fired.append("cb"))
        response.write(b"data: 1\n\n")
        response.abort()
        response.write(b"data: never\n\n")  # a no-op after abort
        assert response.disconnected

    port = await serve(cut)
    got = b""
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("GET", f"http://127.0.0.1:{port}/") as r:
                async for part in r.aiter_bytes():
                    got += part
    assert got == b"data: 1\n\n"
    assert fired == ["cb"]


async def test_write_before_start_stream_is_a_handler_error(serve, connect):
    async def wrong(request: Request, response: Response) -> None:
        response.write(b"data: too early\n\n")

    port = await serve(wrong)
    client = await connect(port)
    client.send(get())
    response = await client.response()
    assert response.status == 500 and b"too early" not in response.body


async def test_deep_pipelining_pauses_reading_and_answers_everything_in_order(serve, connect):
    seen = []

    async def slowish(request: Request, response: Response) -> None:
        seen.append(request.path)
        await asyncio.sleep(0.01)
        response.send(200, request.path.encode(), content_type="text/plain")

    port = await serve(slowish, Limits(max_pipelined=2))
    client = await connect(port)
    client.send(b"".join(get(f"/{i}") for i in range(12)))
    got = await client.responses(12)
    assert [r.body for r in got] == [f"/{i}".encode() for i in range(12)]
    assert seen == [f"/{i}" for i in range(12)]


async def test_pipelined_requests_after_a_failed_stream_are_not_served(serve, connect):
    served = []

    async def first_breaks(request: Request, response: Response) -> None:
        served.append(request.path)
        if request.path == "/1":
            response.start_stream()
            response.write(b"data: x\n\n")
            raise RuntimeError("upstream died")
        response.send(200, b"ok", content_type="text/plain")

    port = await serve(first_breaks)
    client = await connect(port)
    client.send(get("/1") + get("/2"))
    assert await client.closed_by_server()
    await asyncio.sleep(0.05)
    assert served == ["/1"]


async def test_http10_stream_is_close_delimited(serve, connect):
    async def sse(request: Request, response: Response) -> None:
        response.start_stream()
        response.write(b"data: a\n\n")
        response.write(b"data: b\n\n")
        response.end()

    port = await serve(sse)
    client = await connect(port)
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    raw = b""
    async with asyncio.timeout(5):
        while chunk := await client.reader.read(4096):
            raw += chunk
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
    assert body == b"data: a\n\ndata: b\n\n"
