"""One way to turn a pydantic ``ValidationError`` into messages that name the field.

Every reader of an exchanged shape (``admit``, the latency profile, the router's config
file and routing documents, the simulator's scenarios) reports errors the same way:
``<path>: <what is wrong>``, with the path written as the user wrote it
(``models[0].tiers[1].tpotMs``, camelCase, list indices in brackets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

# The pattern of a string that must not be blank (JSON Schema patterns are unanchored).
NOT_BLANK = r"\S"

_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def field_path(loc: Sequence[int | str]) -> str:
    """``("models", 0, "tiers", 1, "tpotMs")`` -> ``models[0].tiers[1].tpotMs``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-"):  # pydantic's name for a validator step, not a field
            continue
        else:
            out += f".{part}" if out else part
    return out


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def describe_error(err: Any) -> str:
    """One ``pydantic_core.ErrorDetails`` as ``<path>: <message>``."""
    kind = err["type"]
    msg = _lower_first(str(err["msg"]).removeprefix("Value error, "))
    if kind == "missing":
        msg = "required field is missing"
    elif kind == "extra_forbidden":
        msg = "unknown field"
    elif kind in _RANGE_ERRORS:
        msg = f"{err['input']!r} is out of range ({msg})"
    elif kind == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == NOT_BLANK:
        msg = "must not be blank"
    elif kind.endswith("_type") or kind in ("finite_number", "literal_error", "enum", "string_pattern_mismatch"):
        msg = f"{msg}, got {err['input']!r}"
    path = field_path(err["loc"])
    return f"{path}: {msg}" if path else msg


def describe(exc: ValidationError) -> list[str]:
    """Every error of ``exc``, each naming its field."""
    return [describe_error(err) for err in exc.errors()]
