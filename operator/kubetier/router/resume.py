"""Resuming a broken stream on another server: the request that continues it.

Parsed only on failure: the relay keeps the raw events it sent, and this module reads
the text (and count) of the tokens the client already has from them.
"""

from __future__ import annotations

import json
from typing import Any


def streamed_text(sent: list[bytes]) -> tuple[str, int]:
    """The text and token count of the events already relayed (parsed only on failure)."""
    parts: list[str] = []
    n = 0
    for chunk in sent:
        for line in chunk.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            try:
                ev = json.loads(line[6:])
            except ValueError:
                continue
            choices = ev.get("choices") or []
            if not choices:
                continue
            c = choices[0]
            if "text" in c:
                piece = c.get("text")
            else:
                delta = c.get("delta") or {}
                if "content" not in delta or (delta.get("role") and not delta.get("content")):
                    continue
                piece = delta.get("content")
            if piece is None:
                continue
            parts.append(piece)
            n += 1
    return "".join(parts), n


def build_resume_body(body: dict[str, Any], chat: bool, sent: list[bytes]) -> tuple[bytes | None, int] | None:
    """The request that continues a broken stream, and the tokens already sent.
    (None, n) when nothing is left to generate; None when it cannot be resumed."""
    text, n = streamed_text(sent)
    new: dict[str, Any] = dict(body)
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(new.get(key), int):
            left = new[key] - n
            if left < 1:
                return None, n
            new[key] = left
    if isinstance(new.get("prompt_tokens"), int):
        new["prompt_tokens"] = new["prompt_tokens"] + n
    if chat:
        msgs = list(new.get("messages") or [])
        msgs.append({"role": "assistant", "content": text})
        new["messages"] = msgs
        new["continue_final_message"] = True
        new["add_generation_prompt"] = False
    else:
        p = new.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if not isinstance(p, str):
            return None
        new["prompt"] = p + text
    return json.dumps(new, separators=(",", ":")).encode(), n
