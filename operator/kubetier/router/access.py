"""Authentication and tier choice: which tiers a request may use, and which it gets.

``Authorization: Bearer <key>`` maps to the tiers the key may use; the header
``X-Kubetier-Tier`` asks for one of them (default: the loosest allowed, the largest TPOT
target, then the lowest priority). Asking for a tier the key does not allow is a 403
whose body says which tiers it does allow.
"""

from __future__ import annotations

from collections.abc import Mapping

from kubetier.router.errors import ClientError
from kubetier.router.fleet import ModelFleet


def select_tier(headers: Mapping[str, str], fleet: ModelFleet, keys: Mapping[str, Mapping[str, frozenset[str]]]) -> str:
    tiers = fleet.spec.tiers
    names = {t.name for t in tiers}
    if not fleet.spec.public:
        auth = headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ClientError(401, "missing API key: send 'Authorization: Bearer <key>'")
        grant = keys.get(key.strip())
        if grant is None:
            raise ClientError(401, "invalid API key")
        allowed = (grant.get(fleet.name, frozenset()) | grant.get("*", frozenset())) & names
        if not allowed:
            raise ClientError(403, f"this API key may not use model '{fleet.name}'", "model")
    else:
        allowed = frozenset(names)
    asked = headers.get("x-kubetier-tier")
    if asked:
        asked = asked.strip()
        if asked not in names:
            raise ClientError(
                400,
                f"X-Kubetier-Tier: model '{fleet.name}' has no tier '{asked}' (tiers: {', '.join(sorted(names))})",
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
