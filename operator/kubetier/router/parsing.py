"""Request parsing and validation for the generation routes, and the prompt length the
routing policy needs.

Only what the router itself reads is checked here (model, max_tokens, stream, the prompt
or the messages and every content part's shape); the rest is the engine's to judge.
Every input is either accepted or refused with a 400 naming the field: nothing here may
raise anything but ``ClientError`` (the hypothesis fuzz tests hold it to that, deep
nesting included).

The prompt length is counted from the body, never taken from the client: a client's
``prompt_tokens`` field is ignored here (the engine may read it), since a client could
otherwise make a huge prompt look small to the routing policy.
"""

from __future__ import annotations

import json
from typing import Any

from kubetier.router.errors import ClientError

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English BPE vocabularies
TOKENS_PER_MESSAGE = 4  # chat template role headers (Llama 3's spends 4-5 per message)
TOKENS_PER_MEDIA_PART = 85  # OpenAI's base cost of one low-detail image; a floor for other media
_MEDIA_PARTS = {"image_url": "url", "input_audio": "data", "file": None}
_INT_ONLY = {int}  # JSON numbers without a fraction; true/false are bool, not int
_ROLES = {"system", "user", "assistant", "tool", "developer", "function"}


def _shown(v: Any) -> str:
    """A short, safe rendering of a client's value for an error message."""
    if isinstance(v, (bool, int, float)) or v is None:
        return json.dumps(v)
    if isinstance(v, str):
        return json.dumps(v[:32] + ("..." if len(v) > 32 else ""))
    return f"a JSON {type(v).__name__.replace('dict', 'object').replace('list', 'array')}"


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says why not."""
    try:
        body = json.loads(raw) if raw else None
    except RecursionError:
        raise ClientError(400, "request body is nested too deeply") from None
    except ValueError as exc:  # includes UnicodeDecodeError
        raise ClientError(400, f"request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise ClientError(400, "request body must be a JSON object")
    return body


def check_generation_fields(body: dict[str, Any]) -> str:
    """Validate the fields the router reads; returns the model name."""
    model = body.get("model")
    if model is None:
        raise ClientError(400, "'model' is required", "model")
    if not isinstance(model, str):
        raise ClientError(400, "'model' must be a string", "model")
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ClientError(400, f"'{key}' must be an integer >= 1, got {_shown(v)}", key)
    if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
        raise ClientError(400, "'stream' must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ClientError(400, "'stream_options' must be an object", "stream_options")
    return model


def _content_chars(content: Any, where: str) -> tuple[int, int]:
    """(characters of text, media parts) of one message's content."""
    if content is None:
        return 0, 0
    if isinstance(content, str):
        return len(content), 0
    if not isinstance(content, list):
        raise ClientError(400, f"'{where}' must be a string, a list of content parts or null", where)
    chars = media = 0
    for j, part in enumerate(content):
        pw = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise ClientError(400, f"'{pw}' must be an object with a 'type'", pw)
        kind = part.get("type")
        if not isinstance(kind, str):
            raise ClientError(400, f"'{pw}.type' must be a string", f"{pw}.type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise ClientError(400, f"'{pw}.{kind}' must be a string", f"{pw}.{kind}")
            chars += len(text)
        elif kind in _MEDIA_PARTS:
            inner = part.get(kind)
            if not isinstance(inner, dict):
                raise ClientError(400, f"'{pw}.{kind}' must be an object", f"{pw}.{kind}")
            need = _MEDIA_PARTS[kind]
            if need is not None and not isinstance(inner.get(need), str):
                raise ClientError(400, f"'{pw}.{kind}.{need}' must be a string", f"{pw}.{kind}.{need}")
            media += 1
        else:
            raise ClientError(400, f"'{pw}.type' {_shown(kind)} is not a known content part type", f"{pw}.type")
    return chars, media


def count_prompt_tokens(body: dict[str, Any], chat: bool) -> int:
    """The prompt length the routing policy needs, counted from the body: token-id
    prompts exactly, text at ~4 characters per token (no tokenizer in the router)."""
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ClientError(400, "'messages' is required and must be a non-empty list", "messages")
        chars = media = 0
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise ClientError(400, f"'messages[{i}]' must be an object with a 'role'", f"messages[{i}]")
            role = m.get("role")
            if not isinstance(role, str) or role not in _ROLES:
                raise ClientError(
                    400,
                    f"'messages[{i}].role' must be one of {', '.join(sorted(_ROLES))}, got {_shown(role)}",
                    f"messages[{i}].role",
                )
            c, md = _content_chars(m.get("content"), f"messages[{i}].content")
            name = m.get("name")
            if name is not None and not isinstance(name, str):
                raise ClientError(400, f"'messages[{i}].name' must be a string", f"messages[{i}].name")
            chars += c + (len(name) if name else 0)
            media += md
        return -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(msgs) + TOKENS_PER_MEDIA_PART * media
    if "prompt" not in body or body["prompt"] is None:
        raise ClientError(400, "'prompt' is required", "prompt")
    p = body["prompt"]
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        return max(1, -(-len(p) // CHARS_PER_TOKEN))
    if isinstance(p, list) and p and set(map(type, p)) == _INT_ONLY:  # one C-level pass over the ids
        return len(p)
    raise ClientError(400, "'prompt' must be a string or a list of token ids", "prompt")


def estimate_prompt_tokens(body: dict[str, Any], chat: bool) -> int:
    """Former name of ``count_prompt_tokens``."""
    return count_prompt_tokens(body, chat)
