"""Resuming a broken stream on another server: the request that continues it.

Parsed only on failure: the relay keeps the raw events it sent (one growing buffer), and
this module reads from them what the client already has.

- Completions whose engine returned token ids (vLLM's ``return_token_ids``, which the
  router asks for): the new prompt is the original prompt's ids plus the generated ids,
  exactly, with no re-tokenization (a text round trip can merge or split tokens).
- Otherwise text: completions append the streamed text to the prompt; chat continues an
  assistant message with it (``continue_final_message``).

``max_tokens`` is reduced by the tokens already sent, so the client gets exactly as many
tokens as it asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Sent = bytes | bytearray | list[bytes]


@dataclass
class Streamed:
    """What the client already received, read back from the relayed events."""

    text: str = ""
    tokens: int = 0
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] = field(default_factory=list)
    token_ids_complete: bool = True  # every token event carried its ids


def _events(sent: Sent) -> list[bytes]:
    data = b"".join(sent) if isinstance(sent, list) else bytes(sent)
    return [line[6:] for line in data.split(b"\n") if line.startswith(b"data: {")]


def read_streamed(sent: Sent) -> Streamed:
    out = Streamed()
    parts: list[str] = []
    for raw in _events(sent):
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(ev, dict):
            continue
        choices = ev.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            continue
        c = choices[0]
        if out.prompt_token_ids is None:
            pids = c.get("prompt_token_ids", ev.get("prompt_token_ids"))
            if isinstance(pids, list):
                out.prompt_token_ids = [int(x) for x in pids]
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
        ids = c.get("token_ids")
        if isinstance(ids, list):
            out.token_ids.extend(int(x) for x in ids)
            out.tokens += len(ids)
        else:
            out.token_ids_complete = False
            out.tokens += 1
    out.text = "".join(parts)
    return out


def streamed_text(sent: Sent) -> tuple[str, int]:
    """The text and token count of the events already relayed (parsed only on failure)."""
    s = read_streamed(sent)
    return s.text, s.tokens


def build_resume_body(body: dict[str, Any], chat: bool, sent: Sent) -> tuple[bytes | None, int] | None:
    """The request that continues a broken stream, and the tokens already sent.
    (None, n) when nothing is left to generate; None when it cannot be resumed."""
    s = read_streamed(sent)
    n = s.tokens
    new: dict[str, Any] = dict(body)
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(new.get(key), int):
            left = new[key] - n
            if left < 1:
                return None, n
            new[key] = left
    if isinstance(new.get("min_tokens"), int):  # vLLM refuses min_tokens > max_tokens
        new["min_tokens"] = max(new["min_tokens"] - n, 0)
    if isinstance(new.get("prompt_tokens"), int):
        new["prompt_tokens"] = new["prompt_tokens"] + n
    if chat:
        msgs = list(new.get("messages") or [])
        msgs.append({"role": "assistant", "content": s.text})
        new["messages"] = msgs
        new["continue_final_message"] = True
        new["add_generation_prompt"] = False
    elif s.prompt_token_ids is not None and s.token_ids_complete:
        new["prompt"] = s.prompt_token_ids + s.token_ids
        new["return_token_ids"] = True
    else:
        p = new.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if not isinstance(p, str):
            return None
        new["prompt"] = p + s.text
    return json.dumps(new, separators=(",", ":")).encode(), n
