"""Does a live object already carry everything we would apply? (pure)

Server-side apply is idempotent, but an apply is still a write (it costs an etcd round
trip and, for Deployments, can bump metadata). We apply only when some field we set
differs from the live object. The comparison is a *subset* check: the apiserver adds
defaults (``protocol``, ``terminationMessagePath``, ``clusterIPs``...) that we never set,
and other controllers add labels and annotations. Lists compare element-wise at equal
length, because we own their whole content. Quantities compare by value, since the
apiserver rewrites ``"0.5"`` as ``"500m"``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

_SUFFIX: dict[str, Decimal | int] = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def quantity(value: Any) -> Decimal | None:
    match = _QUANTITY.match(str(value))
    if not match:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2) or ""]
    except InvalidOperation:
        return None


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    if isinstance(want, str) and isinstance(have, (str, int)) and not isinstance(have, bool):
        qw, qh = quantity(want), quantity(have)
        return qw is not None and qw == qh
    return False


def covers(live: Any, want: Any) -> bool:
    """True when ``live`` holds every field of ``want`` with an equal value."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(k in live and covers(live[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(covers(l, w) for l, w in zip(live, want))
    return _same_scalar(want, live)


def first_difference(live: Any, want: Any, path: str = "") -> str | None:
    """The path of the first field that differs (for the log line that explains a write)."""
    if isinstance(want, dict):
        if not isinstance(live, dict):
            return path or "."
        for k, v in want.items():
            if k not in live:
                return f"{path}.{k}"
            found = first_difference(live[k], v, f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(want, list):
        if not isinstance(live, list) or len(live) != len(want):
            return path
        for i, (l, w) in enumerate(zip(live, want)):
            found = first_difference(l, w, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if _same_scalar(want, live) else path
