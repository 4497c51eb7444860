"""The state of one request as it moves through the router, and the router's settings
for serving it (attempts, resumptions, timeouts)."""

from __future__ import annotations

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
        "first_at",
        "fleet",
        "last_at",
        "missed",
        "prefilled",
        "prompt_tokens",
        "prompt_tokens_on_server",
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

    def release(self) -> None:
        """Give the server's capacity back to the routing policy (a no-op when none is held)."""
        if self.server is not None:
            self.fleet.release(
                self.server.spec.server_id, self.prompt_tokens_on_server, self.tokens_on_server, self.prefilled
            )
            self.server = None
            self.tokens_on_server = 0
