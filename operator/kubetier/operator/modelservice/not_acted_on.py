"""Spec fields the operator accepts but does not act on yet, in one place.

A ModelService that sets one of these gets the condition ``FieldsNotActedOn=True``
(reason ``NotActedOnYet``, the message names each field and what happens instead) and,
on that transition, a Warning Event. When a controller starts acting on a field,
delete its entry here (and its test case): nothing else needs to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kubetier.api.modelservice import ModelService, Tier

# prewarm.keepAliveSeconds' API default: a spec that leaves it alone asks for nothing.
DEFAULT_KEEP_ALIVE_SECONDS = 300


@dataclass(frozen=True)
class NotActedOn:
    field: str  # the tier field, as the YAML spells it
    used: Callable[[Tier], bool]  # whether this tier asks for behaviour not built yet
    instead: str  # what the operator does today


# Empty today: prewarm.standby was the last entry (promoted since: autoscale_standby.py).
NOT_ACTED_ON_YET: tuple[NotActedOn, ...] = ()


def fields_not_acted_on(ms: ModelService, table: tuple[NotActedOn, ...] = NOT_ACTED_ON_YET) -> list[str]:
    """One line per (tier, field) the spec uses that the operator does not act on yet."""
    return [
        f"spec.tiers[{tier.name}].{entry.field}: {entry.instead}"
        for tier in ms.spec.tiers
        for entry in table
        if entry.used(tier)
    ]
