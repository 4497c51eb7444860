"""An in-process OpenAI-style engine on the real lean HTTP server, for fast router tests
that need to script an engine's behaviour (slow answers, stalls, dying mid-stream,
failing health checks) and observe it (requests seen, disconnects).

Token ``i`` of a sequence (prompt included) is ``" t<i>"`` with id ``i``, so a stream
resumed from its prompt plus the tokens already sent continues exactly where the broken
one stopped, and any duplicated or missing token shows in the text. Prompts: token-id
lists count one token per id; text counts one token per 4 characters (like the router).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from kubetier.lean_http import port_of, start_server


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()  # compact, as vLLM sends it


@dataclass
class Script:
    token_delay_s: float = 0.005
    die_after_tokens: int | None = None  # cut the connection after this many tokens (once)
    stall_after_tokens: int | None = None  # stop sending (keep the connection) after this many
    healthy: bool = True
    whole_delay_s: float = 0.0  # extra time before a non-streamed answer


@dataclass
class FakeEngine:
    script: Script = field(default_factory=Script)
    port: int = 0
    requests: list[dict] = field(default_factory=list)
    disconnects: int = 0
    finished: int = 0
    server: object = None
    _ids: int = 0

    async def start(self) -> FakeEngine:
        self.server = await start_server(self.handle, "127.0.0.1", 0)
        self.port = port_of(self.server)
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, req, res) -> None:
        if req.path == "/health":
            res.send(200 if self.script.healthy else 503, b"ok", content_type="text/plain")
            return
        if req.path == "/metrics":
            res.send(200, b"", content_type="text/plain")
            return
        body = json.loads(req.body)
        self.requests.append(body)
        chat = req.path.endswith("chat/completions")
        if chat:
            prompt_len = sum(len(m.get("content") or "") for m in body["messages"]) // 4 + 4 * len(body["messages"])
            prompt_ids = None
        else:
            p = body["prompt"]
            prompt_ids = list(p) if isinstance(p, list) else [1000 + i for i in range(max(1, -(-len(p) // 4)))]
            prompt_len = len(prompt_ids)
        n = body.get("max_tokens") or 16
        self._ids += 1
        cid = f"cmpl-{self.port}-{self._ids}"
        gone = asyncio.Event()

        def on_gone() -> None:
            self.disconnects += 1
            gone.set()

        res.add_disconnect_callback(on_gone)
        s = self.script
        if not body.get("stream"):
            try:
                await asyncio.wait_for(gone.wait(), s.whole_delay_s + n * s.token_delay_s)
                return  # the client (router) left: the engine stopped working
            except TimeoutError:
                pass
            text = "".join(f" t{prompt_len + i}" for i in range(n))
            self.finished += 1
            choice = {"index": 0, "finish_reason": "length"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            res.send_json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion" if chat else "text_completion",
                    "choices": [choice],
                    "usage": {"prompt_tokens": prompt_len, "completion_tokens": n, "total_tokens": prompt_len + n},
                },
            )
            return
        res.start_stream(200)
        obj = "chat.completion.chunk" if chat else "text_completion"
        if chat:
            ev = {"id": cid, "object": obj, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
            res.write(b"data: " + _dumps(ev) + b"\n\n")
        ask_ids = bool(body.get("return_token_ids")) and not chat
        for i in range(n):
            await asyncio.sleep(s.token_delay_s)
            if res.disconnected:
                return
            if s.die_after_tokens is not None and i == s.die_after_tokens:
                s.die_after_tokens = None
                res.abort()
                return
            if s.stall_after_tokens is not None and i == s.stall_after_tokens:
                s.stall_after_tokens = None
                await gone.wait()
                return
            pos = prompt_len + i
            if chat:
                choice = {"index": 0, "delta": {"content": f" t{pos}"}, "finish_reason": None}
            else:
                choice = {"index": 0, "text": f" t{pos}", "finish_reason": None}
                if ask_ids:
                    choice["token_ids"] = [pos]
                    if i == 0:
                        choice["prompt_token_ids"] = prompt_ids
            res.write(b"data: " + _dumps({"id": cid, "object": obj, "choices": [choice]}) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            u = {"prompt_tokens": prompt_len, "completion_tokens": n, "total_tokens": prompt_len + n}
            res.write(b"data: " + _dumps({"id": cid, "object": obj, "choices": [], "usage": u}) + b"\n\n")
        res.write(b"data: [DONE]\n\n")
        self.finished += 1
        res.end()


def router_config(engines: list[FakeEngine], tiers: list[dict] | None = None, server_tiers=None, **model) -> dict:
    tiers = tiers or [{"name": "t", "ttftMs": 1000, "tpotMs": 100}]
    server_tiers = server_tiers or [tiers[0]["name"]] * len(engines)
    m = {
        "name": "m",
        "profile": "llama-3.1-8b-h100",
        "tiers": tiers,
        "servers": [{"url": e.url, "tier": t} for e, t in zip(engines, server_tiers, strict=True)],
    }
    m.update(model)
    return {"models": [m]}
