"""The router's refusals: one exception carrying an OpenAI-style error answer.

Every refusal the router gives a client goes through ``ClientError`` so that the status,
the message, the ``param`` the client got wrong and any extra headers (``Retry-After``,
rate-limit headers) are decided where the refusal is found and written in one place.
"""

from __future__ import annotations

from collections.abc import Iterable


class ClientError(Exception):
    """Answer the request with ``status`` and an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = list(headers)
        self.code = code


# The name the first router used; kept for the tests and callers that import it.
BadRequest = ClientError
