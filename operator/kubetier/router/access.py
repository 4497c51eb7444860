"""Authentication, abuse throttling, per-key rate limits, and tier choice.

- Keys are kept as SHA-256 digests only; a presented key is hashed, found by its digest
  and confirmed with a constant-time comparison. Logs name a key by a short fingerprint
  of its digest, never the key.
- An address that presents bad keys ``max_failures`` times within ``window_s`` is refused
  (429) for ``block_s`` before its key is even looked at: guessing keys gets slow.
- Per key and tier: requests per minute, tokens per minute (prompt tokens counted by the
  router from the body plus the ``max_tokens`` reserved, as OpenAI counts) and requests
  in flight, each 0 = unlimited. Refusals are 429 with ``Retry-After`` and OpenAI's
  ``x-ratelimit-*`` headers; admitted answers carry the same headers. The limits are per
  router process (with ``--workers K`` or N replicas, divide by K x N).
- Tier choice: ``Authorization: Bearer <key>`` maps to the tiers the key may use; the
  header ``X-Kubetier-Tier`` asks for one of them (default: the loosest allowed, the
  largest TPOT target, then the lowest priority). Asking for a tier the key does not
  allow is a 403 whose body says which tiers it does allow.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kubetier.router.errors import ClientError
from kubetier.router.fleet import ModelFleet

Grant = Mapping[str, frozenset[str]]  # model name or "*" -> allowed tier names


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def fingerprint(digest: bytes) -> str:
    """A key's name in logs: 8 hex digits of its digest (not enough to find the key)."""
    return digest[:4].hex()


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The key in ``Authorization: Bearer <key>``; None when absent or malformed."""
    auth = headers.get("authorization", "")
    scheme, _, key = auth.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


class KeyStore:
    def __init__(self, keys: Mapping[str, Grant]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Grant]] = {}
        for key, grant in keys.items():
            d = key_digest(key)
            self._by_digest[d] = (d, grant)

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def lookup(self, presented: str) -> tuple[str, Grant] | None:
        """(fingerprint, grant) of a valid key, else None."""
        d = key_digest(presented)
        entry = self._by_digest.get(d)
        # The dict finds the entry by the digest of the guess, which says nothing usable
        # about a real key; the final check is constant-time anyway.
        if entry is None or not hmac.compare_digest(entry[0], d):
            return None
        return fingerprint(d), entry[1]


class BadKeyThrottle:
    """Per client address: too many bad keys in a window blocks the address for a while."""

    def __init__(
        self,
        max_failures: int = 10,
        window_s: float = 60.0,
        block_s: float = 60.0,
        max_tracked: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.block_s = block_s
        self.max_tracked = max_tracked
        self.clock = clock
        self._state: dict[str, list[float]] = {}  # address -> [window start, failures, blocked until]

    def blocked_for(self, address: str) -> float:
        """Seconds this address stays blocked (0 = not blocked)."""
        st = self._state.get(address)
        if st is None:
            return 0.0
        return max(0.0, st[2] - self.clock())

    def failed(self, address: str) -> None:
        now = self.clock()
        st = self._state.get(address)
        if st is None or now - st[0] > self.window_s:
            if len(self._state) >= self.max_tracked:
                self._forget_old(now)
            st = self._state[address] = [now, 0.0, 0.0]
        st[1] += 1
        if st[1] >= self.max_failures:
            st[2] = now + self.block_s

    def _forget_old(self, now: float) -> None:
        for addr in [a for a, s in self._state.items() if now - s[0] > self.window_s and s[2] <= now]:
            del self._state[addr]
        if len(self._state) >= self.max_tracked:  # under attack from very many addresses
            self._state.clear()


@dataclass(frozen=True)
class KeyLimits:
    """Per key and tier; 0 = unlimited."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0

    @property
    def active(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.max_concurrent)


class _Bucket:
    """A token bucket refilled at ``per_minute`` / 60 per second, holding at most a minute's worth."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = float(per_minute)
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (inf when it never fits)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def reset_s(self) -> float:
        return (self.capacity - self.level) / self.rate


class RateLimiter:
    def __init__(self, limits: KeyLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._requests: dict[tuple[str, str], _Bucket] = {}
        self._tokens: dict[tuple[str, str], _Bucket] = {}
        self._inflight: dict[tuple[str, str], int] = {}

    def admit(self, key: str, tier: str, tokens: int) -> list[tuple[str, str]]:
        """Take one request and ``tokens`` for (key, tier); returns the rate-limit headers
        for the answer. Raises a 429 ``ClientError`` when over a limit."""
        lim = self.limits
        if not lim.active:
            return []
        now = self.clock()
        slot = (key, tier)
        headers: list[tuple[str, str]] = []
        req = tok = None
        if lim.requests_per_minute:
            req = self._requests.get(slot)
            if req is None:
                req = self._requests[slot] = _Bucket(lim.requests_per_minute, now)
            req.refill(now)
        if lim.tokens_per_minute:
            tok = self._tokens.get(slot)
            if tok is None:
                tok = self._tokens[slot] = _Bucket(lim.tokens_per_minute, now)
            tok.refill(now)
        wait = 0.0
        why = ""
        if req is not None and req.level < 1:
            wait, why = req.wait_for(1), f"{lim.requests_per_minute} requests per minute"
        if tok is not None and tok.level < tokens:
            w = tok.wait_for(tokens)
            if w > wait:
                wait, why = w, f"{lim.tokens_per_minute} tokens per minute"
        if lim.max_concurrent and self._inflight.get(slot, 0) >= lim.max_concurrent:
            if not why:
                wait, why = 1.0, f"{lim.max_concurrent} requests in flight"
        if req is not None:
            headers += _headers("requests", lim.requests_per_minute, req.level - (0 if why else 1), req)
        if tok is not None:
            headers += _headers("tokens", lim.tokens_per_minute, tok.level - (0 if why else tokens), tok)
        if why:
            if math.isinf(wait):
                raise ClientError(
                    429,
                    f"this request needs {tokens} tokens, more than the {lim.tokens_per_minute} per minute "
                    f"this API key may use on tier '{tier}'",
                    headers=headers,
                    code="rate_limit_exceeded",
                )
            secs = max(1, math.ceil(wait))
            raise ClientError(
                429,
                f"rate limit of this API key on tier '{tier}' reached ({why}); retry after {secs} s",
                headers=[*headers, ("retry-after", str(secs))],
                code="rate_limit_exceeded",
            )
        if req is not None:
            req.level -= 1
        if tok is not None:
            tok.level -= tokens
        if lim.max_concurrent:
            self._inflight[slot] = self._inflight.get(slot, 0) + 1
        return headers

    def release(self, key: str, tier: str) -> None:
        if self.limits.max_concurrent:
            slot = (key, tier)
            left = self._inflight.get(slot, 0) - 1
            if left > 0:
                self._inflight[slot] = left
            else:
                self._inflight.pop(slot, None)


def _headers(kind: str, limit: int, remaining: float, bucket: _Bucket) -> list[tuple[str, str]]:
    return [
        (f"x-ratelimit-limit-{kind}", str(limit)),
        (f"x-ratelimit-remaining-{kind}", str(max(0, int(remaining)))),
        (f"x-ratelimit-reset-{kind}", f"{bucket.reset_s():.3g}s"),
    ]


def authorize(headers: Mapping[str, str], fleet: ModelFleet, keys: KeyStore) -> tuple[frozenset[str], str]:
    """(the tiers this request may use on ``fleet``, the key's fingerprint or "")."""
    names = frozenset(t.name for t in fleet.spec.tiers)
    if fleet.spec.public:
        return names, ""
    key = bearer_key(headers)
    if key is None:
        raise ClientError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
    found = keys.lookup(key)
    if found is None:
        raise ClientError(401, "invalid API key", code="invalid_api_key")
    fp, grant = found
    allowed = (grant.get(fleet.name, frozenset()) | grant.get("*", frozenset())) & names
    if not allowed:
        raise ClientError(403, f"this API key may not use model '{fleet.name}'", "model")
    return allowed, fp


def select_tier(headers: Mapping[str, str], fleet: ModelFleet, allowed: frozenset[str]) -> str:
    tiers = fleet.spec.tiers
    names = {t.name for t in tiers}
    asked = headers.get("x-kubetier-tier")
    if asked:
        asked = asked.strip()
        if asked not in names:
            raise ClientError(
                400,
                f"X-Kubetier-Tier: model '{fleet.name}' has no tier '{asked[:64]}' (tiers: {', '.join(sorted(names))})",
                "X-Kubetier-Tier",
            )
        if asked not in allowed:
            raise ClientError(
                403,
                f"X-Kubetier-Tier: this API key may not use tier '{asked}' of model "
                f"'{fleet.name}' (allowed: {', '.join(sorted(allowed))})",
                "X-Kubetier-Tier",
            )
        return asked
    # The loosest allowed tier: the largest TPOT, then the lowest priority.
    return max((t for t in tiers if t.name in allowed), key=lambda t: (t.tpot_ms, -t.priority)).name
