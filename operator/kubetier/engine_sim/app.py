"""The engine simulator's HTTP front: OpenAI-compatible routes on the lean HTTP server.

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health
(503 until the simulated model load ends, then 200), GET /metrics (vLLM names).

Fault injection (for reliability tests), decided per request with the seeded RNG:
``fail_fraction`` answers 500 at once; ``abort_after_tokens`` / ``abort_fraction``
cut the connection abruptly after N tokens (a stream without its terminating chunk,
or a non-streamed request with no answer at all); ``slowdown`` stretches every
iteration (in Engine).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from kubetier.engine_sim.engine import Engine
from kubetier.engine_sim.metrics import EngineMetrics
from kubetier.engine_sim.openai_api import ApiError, StreamFormat, completion_body, parse_request
from kubetier.engine_sim.scheduler import Sequence
from kubetier.engine_sim.tokens import FILLER_BYTES, FILLER_WORDS, OutputLengthSampler, filler_text
from kubetier.lean_http import Limits, Request, Response, error_body, start_server
from kubetier.policy.latency import LatencyModel

log = logging.getLogger("kubetier.engine_sim")

DEFAULT_MAX_MODEL_LEN = 131072  # Llama 3.1's context; capped by the profile's KV capacity


@dataclass(frozen=True)
class SimConfig:
    model_name: str = ""  # served model name; "" = the profile's model
    model_load_seconds: float = 0.0
    time_scale: float = 1.0
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    seed: int = 0
    mean_output_tokens: float = 256.0
    slowdown: float = 1.0
    fail_fraction: float = 0.0
    abort_after_tokens: int | None = None
    abort_fraction: float | None = None

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")
        if not self.slowdown > 0:
            raise ValueError(f"slowdown must be > 0, got {self.slowdown}")
        if self.model_load_seconds < 0:
            raise ValueError(f"model_load_seconds must be >= 0, got {self.model_load_seconds}")
        for name in ("fail_fraction", "abort_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.abort_after_tokens is not None and self.abort_after_tokens < 1:
            raise ValueError(f"abort_after_tokens must be >= 1, got {self.abort_after_tokens}")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")


class _RequestState:
    """What the engine hands back to the HTTP handler of one request."""

    __slots__ = ("done", "finish_reason")

    def __init__(self, done: asyncio.Future, finish_reason: str) -> None:
        self.done = done
        self.finish_reason = finish_reason


class EngineSimulator:
    def __init__(self, model: LatencyModel, config: SimConfig = SimConfig()) -> None:
        self.model = model
        self.config = config
        self.served_model = config.model_name or model.model or model.name
        self.max_model_len = min(config.max_model_len or DEFAULT_MAX_MODEL_LEN, model.kv_capacity_tokens)
        self.rng = random.Random(config.seed)
        self.lengths = OutputLengthSampler(config.mean_output_tokens, rng=random.Random(config.seed + 1))
        self.metrics = EngineMetrics(self.served_model)
        self.engine = Engine(
            model,
            self.metrics,
            max_num_seqs=config.max_num_seqs,
            time_scale=config.time_scale,
            slowdown=config.slowdown,
        )
        self.loaded = False
        self.created = int(time.time())
        self._id_prefix = f"{self.rng.getrandbits(32):08x}"
        self._next_id = 0
        self._load_timer: asyncio.TimerHandle | None = None

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine loop and the simulated model load (on the running loop)."""
        self.engine.start()
        load_s = self.config.model_load_seconds / self.config.time_scale
        if load_s <= 0:
            self.loaded = True
        else:
            self._load_timer = asyncio.get_running_loop().call_later(load_s, self._finish_load)

    def _finish_load(self) -> None:
        self.loaded = True
        log.info("model %s loaded", self.served_model)

    async def serve(
        self, host: str = "127.0.0.1", port: int = 8000, *, limits: Limits | None = None, reuse_port: bool = False
    ) -> asyncio.AbstractServer:
        server = await start_server(self.handle, host, port, limits=limits, reuse_port=reuse_port)
        self.start()
        return server

    async def stop(self) -> None:
        if self._load_timer is not None:
            self._load_timer.cancel()
        await self.engine.stop()

    # --- routing ----------------------------------------------------------------------

    async def handle(self, request: Request, response: Response) -> None:
        path = request.path
        method = request.method
        if path == "/v1/completions" or path == "/v1/chat/completions":
            if method != "POST":
                response.send(405, error_body(405, f"{method} not allowed on {path}; use POST"), [("allow", "POST")])
                return
            await self._generate(request, response, chat=path == "/v1/chat/completions")
        elif path == "/health":
            if self.loaded:
                response.send(200, b"", content_type="text/plain")
            else:
                response.send(503, error_body(503, "model is loading"))
        elif path == "/metrics":
            response.send(200, self.render_metrics().encode(), content_type="text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/models":
            if not self.loaded:
                response.send(503, error_body(503, "model is loading"))
                return
            response.send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.served_model,
                            "object": "model",
                            "created": self.created,
                            "owned_by": "kubetier",
                            "root": self.served_model,
                            "parent": None,
                            "max_model_len": self.max_model_len,
                        }
                    ],
                },
            )
        else:
            response.send(404, error_body(404, f"no route for {path}"))

    def render_metrics(self) -> str:
        s = self.engine.scheduler
        return self.metrics.render(
            running=s.num_running,
            waiting=s.num_waiting,
            kv_usage=self.engine.kv_usage,
            kv_tokens=s.kv_held,
            queued_prefill_tokens=s.queued_prefill_tokens,
            power_watts=self.engine.power_watts,
            time_scale=self.config.time_scale,
            loaded=self.loaded,
        )

    # --- generation -------------------------------------------------------------------

    async def _generate(self, request: Request, response: Response, *, chat: bool) -> None:
        if not self.loaded:
            response.send(503, error_body(503, "model is loading"))
            return
        if self.engine.error is not None:
            response.send(500, error_body(500, "engine loop crashed"))
            return
        try:
            params = parse_request(
                request.body, chat=chat, served_model=self.served_model, max_model_len=self.max_model_len
            )
        except ApiError as exc:
            response.send(exc.status, error_body(exc.status, exc.message, param=exc.param))
            return
        config = self.config
        rng = self.rng
        if config.fail_fraction and rng.random() < config.fail_fraction:
            self.metrics.failed_injected += 1
            response.send(500, error_body(500, "injected failure (--fail-fraction)"))
            return

        if params.max_tokens is not None:
            output_tokens, finish_reason = params.max_tokens, "length"
        else:
            output_tokens = self.lengths.sample(self.max_model_len - params.prompt_tokens)
            finish_reason = "stop"
        abort_at = self._abort_point(output_tokens)

        self._next_id += 1
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{self._id_prefix}{self._next_id:08x}"
        created = int(time.time())
        offset = self._next_id % len(FILLER_WORDS)
        if params.prompt_token_ids is not None:
            # Token i of the whole sequence is word i: a stream resumed from its prompt and
            # generated ids continues with exactly the tokens the broken one would have sent.
            offset = len(params.prompt_token_ids) % len(FILLER_WORDS)
        state = _RequestState(asyncio.get_running_loop().create_future(), finish_reason)
        seq = Sequence(params.prompt_tokens, output_tokens, ctx=state)

        if params.stream:
            fmt = StreamFormat(
                chat=chat,
                request_id=request_id,
                created=created,
                model=params.model,
                include_usage=params.include_usage,
            )
            if params.prompt_token_ids is not None:
                seq.on_token = _token_id_emitter(response, fmt, offset, abort_at, finish_reason, params)
            else:
                seq.on_token = _stream_emitter(response, fmt, offset, abort_at, finish_reason, params.prompt_tokens)
            response.start_stream()
        elif abort_at is not None:
            seq.on_token = _abort_emitter(response, abort_at)

        engine = self.engine
        response.add_disconnect_callback(lambda: engine.abort(seq))
        engine.submit(seq)
        await state.done
        if engine.error is not None and not seq.finished:
            # The loop died under this request: fail it visibly, never end it cleanly.
            if response.started:
                response.abort()
            else:
                response.send(500, error_body(500, "engine loop crashed"))
            return
        if params.stream or seq.aborted or response.disconnected:
            return  # the stream was written by the engine loop, or nobody is listening
        response.send_json(
            200,
            completion_body(
                chat=chat,
                request_id=request_id,
                created=created,
                model=params.model,
                text=filler_text(offset, seq.generated),
                finish_reason=finish_reason,
                prompt_tokens=params.prompt_tokens,
                completion_tokens=seq.generated,
            ),
        )

    def _abort_point(self, output_tokens: int) -> int | None:
        """The token after which this request is cut off, or None."""
        config = self.config
        if config.abort_after_tokens is None and config.abort_fraction is None:
            return None
        if config.abort_fraction is not None and self.rng.random() >= config.abort_fraction:
            return None
        if config.abort_after_tokens is not None:
            at = config.abort_after_tokens
        else:
            at = self.rng.randint(1, max(1, output_tokens - 1))
        return at if at < output_tokens else None


def _stream_emitter(
    response: Response, fmt: StreamFormat, offset: int, abort_at: int | None, finish_reason: str, prompt_tokens: int
):
    """The per-token callback of one stream: one write per token, bytes spliced only."""
    write = response.write
    head, tail, opening = fmt.head, fmt.tail, fmt.opening
    words = FILLER_BYTES
    n_words = len(words)
    cut = abort_at or 0

    def on_token(seq: Sequence) -> None:
        g = seq.generated
        if g < seq.output_tokens:
            chunk = head + words[(offset + g - 1) % n_words] + tail
            write(opening + chunk if g == 1 else chunk)
            if g == cut:
                response.abort()
        else:
            last = FILLER_WORDS[(offset + g - 1) % n_words]
            closing = fmt.closing(last, finish_reason, prompt_tokens, g)
            write(opening + closing if g == 1 else closing)
            response.end()

    return on_token


def _token_id_emitter(
    response: Response, fmt: StreamFormat, offset: int, abort_at: int | None, finish_reason: str, params
):
    """``return_token_ids`` streams (completions): each chunk carries its token's id (the
    word's index), the first one the prompt's ids too. Encoded per token: test traffic."""
    import json

    n_words = len(FILLER_WORDS)
    cut = abort_at or 0
    base = fmt.head[len(b"data: ") :] + b'"}]}'  # a parsable chunk: read id/object/created/model from it
    meta = {k: v for k, v in json.loads(base).items() if k in ("id", "object", "created", "model")}

    def on_token(seq: Sequence) -> None:
        g = seq.generated
        w = (offset + g - 1) % n_words
        last = g >= seq.output_tokens
        choice = {
            "index": 0,
            "text": FILLER_WORDS[w],
            "logprobs": None,
            "finish_reason": finish_reason if last else None,
        }
        choice["stop_reason"] = None
        if g == 1:
            choice["prompt_token_ids"] = list(params.prompt_token_ids)
        choice["token_ids"] = [w]
        chunk = dict(meta, choices=[choice])
        if params.include_usage:
            chunk["usage"] = None
        out = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        if last:
            if params.include_usage:
                u = {
                    "prompt_tokens": params.prompt_tokens,
                    "total_tokens": params.prompt_tokens + g,
                    "completion_tokens": g,
                }
                out += b"data: " + json.dumps(dict(meta, choices=[], usage=u), separators=(",", ":")).encode() + b"\n\n"
            out += b"data: [DONE]\n\n"
        response.write(out)
        if last:
            response.end()
        elif g == cut:
            response.abort()

    return on_token


def _abort_emitter(response: Response, abort_at: int):
    def on_token(seq: Sequence) -> None:
        if seq.generated == abort_at:
            response.abort()

    return on_token
