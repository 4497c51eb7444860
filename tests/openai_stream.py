"""A streamed OpenAI completion as the tests see it: the HTTP status and the number of
token chunks (a ``data:`` event with a choice; the usage chunk and ``[DONE]`` are not
tokens). Shared by the router tests and the e2e suite (both put ``tests/`` on the path:
pyproject.toml, ``pythonpath``).

Imported by name (``from openai_stream import count_streamed_tokens``), never from conftest.
"""

from __future__ import annotations

import json

import httpx


async def count_streamed_tokens(client: httpx.AsyncClient, base: str, tier: str, body: dict) -> tuple[int, int]:
    """POST ``body`` to ``{base}/v1/completions`` for ``tier`` (``X-Kubetier-Tier``): the
    status and the token chunks streamed (0 when the status is not 200)."""
    tokens = 0
    async with client.stream("POST", f"{base}/v1/completions", json=body, headers={"X-Kubetier-Tier": tier}) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, 0
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:]).get("choices"):
                tokens += 1
    return 200, tokens
