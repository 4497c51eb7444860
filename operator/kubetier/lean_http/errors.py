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


def error_body(status: int, message: str, type_: str | None = None, *, param: str | None = None) -> bytes:
    """The JSON body of an error response; ``param`` names the offending request field."""
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": type_ or error_type_for(status),
                "param": param,
                "code": status,
            }
        },
        separators=(",", ":"),
    ).encode()
