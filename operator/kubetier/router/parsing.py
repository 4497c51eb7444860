"""Request parsing and validation for the generation routes, and the prompt length the
routing policy needs.

Only what the router itself needs is checked here (model, max_tokens, stream, the prompt
or messages shape); everything else is the engine's to judge. Every shape a client can
send is either accepted or refused with a 400 naming the field: nothing here may raise
anything but ``ClientError``.
"""

from __future__ import annotations

import json
from typing import Any

from kubetier.router.errors import ClientError


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says why not."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError as exc:
        raise ClientError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ClientError(400, "request body is nested too deeply") from None
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
            raise ClientError(400, f"'{key}' must be an integer >= 1, got {json.dumps(v)}", key)
    if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
        raise ClientError(400, "'stream' must be a boolean", "stream")
    return model


def estimate_prompt_tokens(body: dict[str, Any], chat: bool) -> int:
    """The prompt length the policy needs: the ``prompt_tokens`` hint when given
    (benchmarks and the engine simulator use it), else ~4 characters per token."""
    hint = body.get("prompt_tokens")
    if isinstance(hint, int) and not isinstance(hint, bool) and hint > 0:
        return hint
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ClientError(400, "'messages' is required and must be a non-empty list", "messages")
        chars = 0
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m:
                raise ClientError(400, f"'messages[{i}]' must be an object with a 'role'", f"messages[{i}]")
            c = m.get("content")
            if isinstance(c, str):
                chars += len(c)
            elif isinstance(c, list):
                chars += sum(len(p.get("text", "")) for p in c if isinstance(p, dict))
        return max(1, -(-chars // 4)) + 4 * len(msgs)
    if "prompt" not in body or body["prompt"] is None:
        raise ClientError(400, "'prompt' is required", "prompt")
    p = body["prompt"]
    if isinstance(p, list) and len(p) == 1:
        p = p[0]
    if isinstance(p, str):
        return max(1, -(-len(p) // 4))
    if isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        return len(p)
    raise ClientError(400, "'prompt' must be a string or a list of token ids", "prompt")
