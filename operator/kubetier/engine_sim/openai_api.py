"""OpenAI request validation and response shapes for the engine simulator.

Shapes follow vLLM's OpenAI server (which follows OpenAI): ``text_completion`` and
``chat.completion`` bodies, ``text_completion`` / ``chat.completion.chunk`` stream
chunks, the chat stream opening with a ``{"role": "assistant", "content": ""}`` delta,
``finish_reason`` on the last token's chunk, an extra ``choices: []`` chunk carrying
``usage`` when ``stream_options.include_usage`` is set (and ``"usage": null`` on the
others), then ``data: [DONE]``.

Per stream, everything but the token text is encoded once: a chunk is
``head + word + tail`` (bytes), no JSON encoding per token.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from kubetier.engine_sim.tokens import CHAT_TOKENS_PER_MESSAGE, text_tokens

_CHAT_ROLES = {"system", "user", "assistant", "tool", "developer", "function"}


class ApiError(Exception):
    """A request the API refuses; ``param`` names the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    chat: bool
    model: str
    prompt_tokens: int
    max_tokens: int | None  # None: the engine draws a length (stops as if at EOS)
    stream: bool
    include_usage: bool
    # vLLM's ``return_token_ids`` (completions): the prompt's ids on the first chunk and each
    # token's id on its chunk, so a router can resume a broken stream by token ids.
    prompt_token_ids: tuple[int, ...] | None = None


def _bad(message: str, param: str) -> ApiError:
    return ApiError(400, message, param)


def _opt_int(body: dict, key: str, lo: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{key}' must be an integer, got {json.dumps(value)}", key)
    if value < lo:
        raise _bad(f"'{key}' must be >= {lo}, got {value}", key)
    return value


def _opt_number(body: dict, key: str, lo: float, hi: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"'{key}' must be a number, got {json.dumps(value)}", key)
    if not lo <= value <= hi:
        raise _bad(f"'{key}' must be between {lo:g} and {hi:g}, got {value}", key)


def _opt_bool(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"'{key}' must be a boolean, got {json.dumps(value)}", key)
    return value


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)


def _completion_prompt_tokens(body: dict) -> int:
    if "prompt" not in body or body["prompt"] is None:
        raise _bad("'prompt' is required", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return max(1, text_tokens(prompt))
    if _is_token_ids(prompt) and prompt:
        return len(prompt)
    if isinstance(prompt, list) and len(prompt) == 1:
        only = prompt[0]
        if isinstance(only, str):
            return max(1, text_tokens(only))
        if _is_token_ids(only) and only:
            return len(only)
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise _bad("'prompt' with several prompts (batch) is not supported; send one per request", "prompt")
    raise _bad("'prompt' must be a string, a list of token ids, or a one-element list of either", "prompt")


def _message_text_len(content: Any, i: int) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _bad(f"'{where}' must be an object with a 'type'", where)
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise _bad(f"'{where}.text' must be a string", f"{where}.text")
                total += len(part["text"])
            else:
                raise _bad(f"'{where}.type' {part['type']!r} is not supported (text only)", f"{where}.type")
        return total
    raise _bad(f"'messages[{i}].content' must be a string, a list of parts or null", f"messages[{i}].content")


def _chat_prompt_tokens(body: dict) -> int:
    messages = body.get("messages")
    if messages is None:
        raise _bad("'messages' is required", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages")
    chars = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(f"'messages[{i}]' must be an object", f"messages[{i}]")
        role = msg.get("role")
        if role not in _CHAT_ROLES:
            raise _bad(
                f"'messages[{i}].role' must be one of {', '.join(sorted(_CHAT_ROLES))}, got {json.dumps(role)}",
                f"messages[{i}].role",
            )
        chars += _message_text_len(msg.get("content"), i)
    return max(1, -(-chars // 4)) + CHAT_TOKENS_PER_MESSAGE * len(messages)


def parse_request(raw: bytes, *, chat: bool, served_model: str, max_model_len: int) -> GenerationRequest:
    """Validate a /v1/completions or /v1/chat/completions body."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")

    model = body.get("model", served_model)
    if not isinstance(model, str):
        raise _bad(f"'model' must be a string, got {json.dumps(model)}", "model")
    if model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")

    prompt_tokens = _chat_prompt_tokens(body) if chat else _completion_prompt_tokens(body)
    hint = _opt_int(body, "prompt_tokens", 1)
    if hint is not None:
        prompt_tokens = hint  # an exact length from the caller beats the estimate

    max_tokens = _opt_int(body, "max_tokens", 1)
    if chat:
        mct = _opt_int(body, "max_completion_tokens", 1)
        if mct is not None:
            max_tokens = mct if max_tokens is None else min(max_tokens, mct)
    n = _opt_int(body, "n", 1)
    if n not in (None, 1):
        raise _bad(f"'n' must be 1 (one choice per request), got {n}", "n")
    _opt_number(body, "temperature", 0.0, 2.0)
    _opt_number(body, "top_p", 0.0, 1.0)
    _opt_number(body, "presence_penalty", -2.0, 2.0)
    _opt_number(body, "frequency_penalty", -2.0, 2.0)

    stream = _opt_bool(body, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("'stream_options' must be an object", "stream_options")
        if not stream:
            raise _bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
        include_usage = _opt_bool(options, "include_usage")

    prompt_field = "messages" if chat else "prompt"
    if prompt_tokens >= max_model_len:
        raise _bad(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"{prompt_field} has {prompt_tokens} tokens.",
            prompt_field,
        )
    if max_tokens is not None and prompt_tokens + max_tokens > max_model_len:
        raise _bad(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {prompt_field}, "
            f"{max_tokens} in the completion). Please reduce the length of the {prompt_field} or completion.",
            "max_tokens",
        )
    prompt_ids = None
    if _opt_bool(body, "return_token_ids") and not chat:
        given = body["prompt"][0] if isinstance(body["prompt"], list) and len(body["prompt"]) == 1 else body["prompt"]
        # Text prompts get stand-in ids (no tokenizer here), one per counted token.
        prompt_ids = tuple(given) if _is_token_ids(given) else tuple(1000 + i % 20000 for i in range(prompt_tokens))
    return GenerationRequest(chat, model, prompt_tokens, max_tokens, stream, include_usage, prompt_ids)


# --------------------------------------------------------------------------- shapes

_MARK = "\x00TOKEN\x00"
_MARK_JSON = json.dumps(_MARK)[1:-1]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _split(obj: Any) -> tuple[bytes, bytes]:
    text = _dumps(obj)
    head, tail = text.split(_MARK_JSON)
    return b"data: " + head.encode(), tail.encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


class StreamFormat:
    """Pre-encoded pieces of one request's SSE stream."""

    __slots__ = ("_base", "_chat", "_include_usage", "head", "opening", "tail")

    def __init__(self, *, chat: bool, request_id: str, created: int, model: str, include_usage: bool) -> None:
        self._chat = chat
        self._include_usage = include_usage
        base: dict[str, Any] = {
            "id": request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }
        self._base = base
        self.head, self.tail = _split(self._chunk(_MARK, None))
        if chat:
            opening = dict(
                base,
                choices=[
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                ],
            )
            if include_usage:
                opening["usage"] = None
            self.opening = b"data: " + _dumps(opening).encode() + b"\n\n"
        else:
            self.opening = b""

    def _chunk(self, text: str, finish_reason: str | None) -> dict:
        if self._chat:
            choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
        chunk = dict(self._base, choices=[choice])
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    def closing(self, last_text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The last token's chunk, the usage chunk if asked for, and ``[DONE]``."""
        out = [b"data: ", _dumps(self._chunk(last_text, finish_reason)).encode(), b"\n\n"]
        if self._include_usage:
            out += [
                b"data: ",
                _dumps(dict(self._base, choices=[], usage=usage(prompt_tokens, completion_tokens))).encode(),
                b"\n\n",
            ]
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)


def completion_body(
    *,
    chat: bool,
    request_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict:
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
        kind = "text_completion"
    return {
        "id": request_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(prompt_tokens, completion_tokens),
    }
