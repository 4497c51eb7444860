"""Argument types for the ``kubetier`` subcommands: a number parsed and checked against
its range, so a bad flag is refused by argparse with the rule it broke
("argument --time-scale: must be > 0, got 0") before anything starts.

Standard library only: the production commands (agent) and the development ones
(engine-sim) share it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def _checked(text: str, parse: Callable[[str], N], ok: Callable[[N], bool], rule: str) -> N:
    value = parse(text)
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return value


def positive_float(text: str) -> float:
    return _checked(text, float, lambda v: v > 0, "> 0")


def non_negative_float(text: str) -> float:
    return _checked(text, float, lambda v: not v < 0, ">= 0")  # (NaN passes, as it always has)


def fraction(text: str) -> float:
    return _checked(text, float, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")


def positive_int(text: str) -> int:
    return _checked(text, int, lambda v: v >= 1, ">= 1")
