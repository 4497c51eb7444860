"""The client-facing edge of the router: request ids, CORS, the checks made from a
request's head before its body is read, and structured access logs.

Checks from the head (``lean_http`` calls them before reading the body, so a refused
client cannot make the router buffer megabytes): an address blocked for guessing keys
(429), a POST whose ``Content-Type`` is not JSON (415), a missing or invalid API key
when every model needs one (401). The body of a refused request is read past without
being kept (up to a small cap) so that the client sees the answer rather than a reset.

Access logs: one JSON object per request on the ``kubetier.router.access`` logger: the
request id, client address, method, path, status, outcome, model, tier, the key's
fingerprint (never the key), token counts and timings. Never prompt or answer text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from kubetier.lean_http.errors import openai_error_body
from kubetier.lean_http.server import EarlyAnswer, RequestHead
from kubetier.router.access import BadKeyThrottle, KeyStore, bearer_key

access_log = logging.getLogger("kubetier.router.access")

GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PREFIX = os.urandom(4).hex()
_SEQ = count(1)


def request_id(headers: Mapping[str, str]) -> str:
    """The client's ``X-Request-Id`` when it is a sane token, else a new one."""
    given = headers.get("x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return f"req-{_PREFIX}-{next(_SEQ):x}"


@dataclass(frozen=True)
class Cors:
    """Cross-origin access for browsers: off unless origins are configured (``*`` = any)."""

    origins: tuple[str, ...] = ()

    def allowed(self, origin: str | None) -> str | None:
        if not origin or not self.origins:
            return None
        if "*" in self.origins:
            return "*"
        return origin if origin in self.origins else None

    def preflight_headers(self, origin: str) -> list[tuple[str, str]]:
        return [
            ("access-control-allow-origin", origin),
            ("access-control-allow-methods", "GET, POST, OPTIONS"),
            ("access-control-allow-headers", "authorization, content-type, x-kubetier-tier, x-request-id"),
            ("access-control-max-age", "600"),
            ("vary", "Origin"),
        ]

    def response_headers(self, origin: str) -> list[tuple[str, str]]:
        return [
            ("access-control-allow-origin", origin),
            (
                "access-control-expose-headers",
                "x-request-id, x-kubetier-tier, retry-after, x-ratelimit-limit-requests, "
                "x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, "
                "x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens",
            ),
            ("vary", "Origin"),
        ]


def _early(status: int, message: str, rid: str, headers: tuple[tuple[str, str], ...] = ()) -> EarlyAnswer:
    return EarlyAnswer(status, openai_error_body(status, message), (("x-request-id", rid), *headers))


@dataclass
class HeadGate:
    """``lean_http``'s head check for the client port."""

    keys: Callable[[], KeyStore]
    all_need_keys: Callable[[], bool]
    throttle: BadKeyThrottle

    def __call__(self, head: RequestHead) -> EarlyAnswer | None:
        if head.path not in GENERATION_PATHS or head.method == "OPTIONS":
            return None
        address = head.client[0] if head.client else ""
        blocked = self.throttle.blocked_for(address)
        if blocked > 0:
            secs = str(max(1, int(blocked + 0.999)))
            return _early(
                429,
                f"too many invalid API keys from this address; retry after {secs} s",
                request_id(head.headers),
                (("retry-after", secs),),
            )
        if head.method == "POST":
            ctype = head.headers.get("content-type", "")
            if ctype.split(";", 1)[0].strip().lower() != "application/json":
                return _early(
                    415,
                    f"Content-Type must be application/json, got {ctype[:64]!r}",
                    request_id(head.headers),
                )
        keys = self.keys()
        if keys:
            key = bearer_key(head.headers)
            if key is None:
                if self.all_need_keys():
                    return _early(401, "missing API key: send 'Authorization: Bearer <key>'", request_id(head.headers))
            elif keys.lookup(key) is None:
                self.throttle.failed(address)
                return _early(401, "invalid API key", request_id(head.headers))
        return None


@dataclass
class AccessRecord:
    request_id: str
    client: str
    method: str
    path: str
    started: float = field(default_factory=time.monotonic)
    model: str | None = None
    tier: str | None = None
    key: str | None = None
    prompt_tokens: int | None = None
    outcome: str | None = None
    stream: bool | None = None

    def emit(self, status: int, completion_tokens: int | None = None, ttft_s: float | None = None) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        rec: dict[str, Any] = {
            "requestId": self.request_id,
            "client": self.client,
            "method": self.method,
            "path": self.path[:256],
            "status": status,
            "durationMs": round((time.monotonic() - self.started) * 1000, 2),
        }
        for name, value in (
            ("model", self.model),
            ("tier", self.tier),
            ("key", self.key),
            ("stream", self.stream),
            ("promptTokens", self.prompt_tokens),
            ("completionTokens", completion_tokens),
            ("outcome", self.outcome),
        ):
            if value is not None and value != "":
                rec[name] = value
        if ttft_s is not None:
            rec["ttftMs"] = round(ttft_s * 1000, 2)
        access_log.info(json.dumps(rec, separators=(",", ":")))
