"""The state of one request as it moves through the router, and the router's settings
for serving it (attempts, resumptions, timeouts)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from kubetier.router.fleet import ModelFleet, Upstream


@dataclass(frozen=True)
class ServeSettings:
    max_attempts: int = 3  # servers tried before the first byte reaches the client
    max_migrations: int = 2  # mid-stream resumptions per request
    stall_timeout_s: float = 30.0  # no bytes mid-stream for this long (from the last byte): resume elsewhere
    # Timeouts derived from the request: floor + slack x (the tier's TTFT + tokens x TPOT).
    # The slack lets a loaded but healthy engine run late without being cut off.
    timeout_slack: float = 4.0
    timeout_floor_s: float = 10.0
    resume_by_token_ids: bool = True  # ask engines for token ids (vLLM return_token_ids) on completions streams


class RequestContext:
    """SLO bookkeeping and the server a request holds (released exactly once)."""

    __slots__ = (
        "arrival",
        "at_admit",
        "first_at",
        "fleet",
        "last_at",
        "missed",
        "prefilled",
        "prompt_tokens",
        "prompt_tokens_on_server",
        "sent_at",
        "server",
        "tier",
        "tokens",
        "tokens_on_server",
        "tpot_s",
        "ttft_s",
    )

    def __init__(
        self, fleet: ModelFleet, tier: str, ttft_s: float, tpot_s: float, arrival: float, prompt_tokens: int
    ) -> None:
        self.fleet = fleet
        self.tier = tier
        self.ttft_s = ttft_s
        self.tpot_s = tpot_s
        self.arrival = arrival
        self.prompt_tokens = prompt_tokens
        self.prompt_tokens_on_server = 0
        self.server: Upstream | None = None
        self.prefilled = False
        self.tokens = 0
        self.tokens_on_server = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.missed = False
        self.sent_at = 0.0  # when the request went to the current server
        self.at_admit: tuple[int, int, int] | None = None  # that server's load just after admission

    def on_server(self, server: Upstream, prompt_tokens: int) -> None:
        """The request was admitted to ``server`` and is about to be sent there."""
        self.server = server
        self.prefilled = False
        self.prompt_tokens_on_server = prompt_tokens
        self.at_admit = self.fleet.latency.snapshot(server.spec.server_id)
        self.sent_at = time.monotonic()

    def release(self, done: bool = False) -> None:
        """Give the server's capacity back to the routing policy (a no-op when none is held).

        ``done``: the answer completed. Then the policy also learns the tier's output
        length, and a stream served by one server start to end feeds the latency
        correction (``router.latency_feed``)."""
        if self.server is not None:
            sid = self.server.spec.server_id
            self.fleet.release(
                sid, self.prompt_tokens_on_server, self.tokens_on_server, self.prefilled, self.tier if done else None
            )
            if done and self.at_admit is not None and self.tokens_on_server == self.tokens and self.first_at:
                self.fleet.stream_timed(
                    sid, self.at_admit, self.prompt_tokens, self.sent_at, self.first_at, self.last_at, self.tokens
                )
            self.server = None
            self.tokens_on_server = 0
