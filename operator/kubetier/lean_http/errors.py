"""OpenAI-style error bodies, shared by every kubetier HTTP server.

OpenAI's clients read ``{"error": {"message", "type", "param", "code"}}``; the stock
`openai` library turns the status into its exception class and shows ``message``.
"""

from __future__ import annotations

import json

# Error types as OpenAI's API names them, by HTTP status.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def error_type_for(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "server_error" if status >= 500 else "invalid_request_error"


# Machine-readable ``code`` strings, as OpenAI's API sends them (its clients and the
# users' retry logic switch on ``code``; a number there is vLLM's habit, not OpenAI's).
_CODE_BY_STATUS = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_exceeded",
    431: "headers_too_large",
    500: "internal_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}


def error_code_for(status: int) -> str:
    return _CODE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request")


def error_body(
    status: int,
    message: str,
    type_: str | None = None,
    *,
    param: str | None = None,
    code: str | int | None = None,
) -> bytes:
    """The JSON body of an error response; ``param`` names the offending request field.

    ``code`` defaults to the status number (what vLLM sends, so the engine simulator
    matches it); the router passes OpenAI-style strings (``openai_error_body``)."""
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": type_ or error_type_for(status),
                "param": param,
                "code": status if code is None else code,
            }
        },
        separators=(",", ":"),
    ).encode()


def openai_error_body(status: int, message: str, type_: str | None = None, *, param: str | None = None) -> bytes:
    """``error_body`` with OpenAI's string ``code`` (``rate_limit_exceeded``, ...)."""
    return error_body(status, message, type_, param=param, code=error_code_for(status))
