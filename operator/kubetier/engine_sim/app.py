"""The engine simulator's HTTP front: OpenAI-compatible routes on the lean HTTP server.

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health
(503 until the simulated model load ends, then 200), GET /metrics (vLLM names),
GET/PUT /admin/power-cap (loopback only: the node agent's power-cap actuator).

Sleep mode (``enable_sleep_mode``, vLLM's ``--enable-sleep-mode`` with
``VLLM_SERVER_DEV_MODE=1``): ``POST /sleep?level=1|2`` (level 1 keeps the weights in host
memory, level 2 discards them), ``POST /wake_up`` (answers once awake: ``wake_seconds``
after level 1, a whole ``model_load_seconds`` after level 2), ``GET /is_sleeping``
(``{"is_sleeping": bool}``, true until the wake has finished), gauge
``vllm:engine_sleep_state{sleep_state="awake"|"weights_offloaded"|"discard_all"}``.
While asleep, generation answers 503 "model is sleeping" (vLLM's protected endpoints) and
/health stays 200 (the process is alive). The simulator refuses ``/sleep`` with 409 while
requests are in flight: kubetier drains a server before putting it to sleep, so a sleep
under load is a bug to surface, not to paper over.

Fault injection (for reliability tests), decided per request with the seeded RNG:
``fail_fraction`` answers 500 at once; ``abort_after_tokens`` / ``abort_fraction``
cut the connection abruptly after N tokens (a stream without its terminating chunk,
or a non-streamed request with no answer at all); ``slowdown`` stretches every
iteration (in Engine).
"""

from __future__ import annotations

import asyncio
import ipaddress
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

POWER_CAP_PATH = "/admin/power-cap"

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
    request_overhead_ms: float | None = None  # None: the profile's requestOverheadMs
    fail_fraction: float = 0.0
    abort_after_tokens: int | None = None
    abort_fraction: float | None = None
    enable_sleep_mode: bool = False
    wake_seconds: float = 1.0  # level-1 wake (vLLM: 0.26-0.82 s small models, 3-6 s large)

    def __post_init__(self) -> None:
        if self.wake_seconds < 0:
            raise ValueError(f"wake_seconds must be >= 0, got {self.wake_seconds}")
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


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
            rng=random.Random(config.seed + 2),
            request_overhead_s=None if config.request_overhead_ms is None else config.request_overhead_ms / 1000.0,
        )
        self.loaded = False
        self.created = int(time.time())
        self._id_prefix = f"{self.rng.getrandbits(32):08x}"
        self._next_id = 0
        self._load_timer: asyncio.TimerHandle | None = None
        self.sleep_level = 0  # 0 awake, 1 weights offloaded, 2 weights discarded
        self._waking: asyncio.Future | None = None

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
        elif path in ("/sleep", "/wake_up", "/is_sleeping") and self.config.enable_sleep_mode:
            await self._sleep_routes(request, response)
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
        elif path == POWER_CAP_PATH:
            self._power_cap(request, response)
        else:
            response.send(404, error_body(404, f"no route for {path}"))

    # --- sleep mode -------------------------------------------------------------------

    @property
    def sleeping(self) -> bool:
        return self.sleep_level > 0

    async def _sleep_routes(self, request: Request, response: Response) -> None:
        path, method = request.path, request.method
        want = "GET" if path == "/is_sleeping" else "POST"
        if method != want:
            response.send(405, error_body(405, f"{method} not allowed on {path}; use {want}"), [("allow", want)])
            return
        if path == "/is_sleeping":
            response.send_json(200, {"is_sleeping": self.sleeping})
            return
        if path == "/sleep":
            level_text = dict(p.partition("=")[::2] for p in request.query.split("&") if p).get("level", "1")
            if level_text not in ("1", "2"):
                response.send(400, error_body(400, f"level must be 1 or 2, got {level_text!r}", param="level"))
                return
            if not self.loaded:
                response.send(503, error_body(503, "model is loading"))
                return
            s = self.engine.scheduler
            if s.num_running or s.num_waiting:
                response.send(
                    409,
                    error_body(409, f"{s.num_running + s.num_waiting} requests in flight: drain before /sleep"),
                )
                return
            if self._waking is None:
                self.sleep_level = max(self.sleep_level, int(level_text))
                log.info("engine asleep (level %d)", self.sleep_level)
            response.send(200, b"", content_type="text/plain")
            return
        await self.wake_up()
        response.send(200, b"", content_type="text/plain")

    async def wake_up(self) -> None:
        """Back to serving: ``wake_seconds`` after level 1, a model load after level 2.
        Concurrent callers share one wake."""
        if not self.sleeping:
            return
        if self._waking is None:
            seconds = self.config.wake_seconds if self.sleep_level == 1 else self.config.model_load_seconds
            loop = asyncio.get_running_loop()
            fut = self._waking = loop.create_future()

            def done() -> None:
                self.sleep_level = 0
                self._waking = None
                log.info("engine awake")
                if not fut.done():
                    fut.set_result(None)

            loop.call_later(seconds / self.config.time_scale, done)
        await asyncio.shield(self._waking)

    def _power_cap(self, request: Request, response: Response) -> None:
        """The node agent's actuator: GET the cap state, PUT ``{"capWatts": W | null}``.

        Loopback clients only (403 otherwise): on a GPU node capping needs node
        privileges (NVML), so here it needs to be on the same host.
        """
        client = request.client
        if client is None or not _is_loopback(client[0]):
            response.send(403, error_body(403, f"{POWER_CAP_PATH} accepts loopback clients only"))
            return
        if request.method == "PUT":
            try:
                body = request.json()
                if not isinstance(body, dict) or "capWatts" not in body:
                    raise ValueError('expected a JSON object {"capWatts": <watts> | null}')
                cap = body["capWatts"]
                if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float))):
                    raise ValueError(f"capWatts must be a number or null, got {cap!r}")
                self.engine.set_power_cap(None if cap is None else float(cap))
            except ValueError as exc:
                response.send(400, error_body(400, str(exc)))
                return
            log.info("power cap %s", "lifted" if cap is None else f"set to {cap:g} W")
        elif request.method != "GET":
            response.send(405, error_body(405, f"{request.method} not allowed on {POWER_CAP_PATH}; use GET or PUT"))
            return
        response.send_json(
            200,
            {
                "capWatts": self.engine.power_cap_watts,
                "powerWatts": self.engine.power_watts,
                "maxWatts": self.model.tdp_watts,
                "idleWatts": self.model.idle_watts,
            },
        )

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
            sleep_state=("awake", "weights_offloaded", "discard_all")[self.sleep_level],
            power_cap_watts=self.engine.power_cap_watts,
            max_power_watts=self.model.tdp_watts,
        )

    # --- generation -------------------------------------------------------------------

    async def _generate(self, request: Request, response: Response, *, chat: bool) -> None:
        if not self.loaded:
            response.send(503, error_body(503, "model is loading"))
            return
        if self.sleeping:
            response.send(503, error_body(503, "model is sleeping"))
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
