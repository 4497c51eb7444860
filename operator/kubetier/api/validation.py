"""Admit an object the way the cluster would: schema defaults, OpenAPI checks, then the
pydantic models (whose cross-field validators mirror the CRD's CEL rules)."""

from __future__ import annotations

from functools import cache
from typing import Any

import pydantic

from kubetier.api import openapi
from kubetier.api.errors import describe
from kubetier.api.modelservice import ModelService
from kubetier.api.powerbudget import PowerBudget


class InvalidObject(ValueError):
    """The object would be rejected; ``errors`` lists every reason, each naming its field."""

    def __init__(self, kind: str, name: str, errors: list[str]):
        self.errors = errors
        super().__init__(f"{kind} {name!r} is invalid: " + "; ".join(errors))


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    from kubetier.api.crdgen import all_crds

    return {crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for crd in all_crds()}


def admit(obj: dict[str, Any]) -> ModelService | PowerBudget:
    """Default, check and parse a ModelService or PowerBudget dict; raise InvalidObject."""
    kind = obj.get("kind")
    models = ("ModelService", "PowerBudget")
    name = (obj.get("metadata") or {}).get("name", "")
    if kind not in models:
        raise InvalidObject(
            str(kind), name, [f"kind: Unsupported value: {kind!r}: supported values: {', '.join(models)}"]
        )
    schema = _schemas()[kind]
    defaulted = openapi.default(schema, obj)
    errors = openapi.check(schema, defaulted)
    if errors:
        raise InvalidObject(kind, name, errors)
    try:
        if kind == "ModelService":
            return ModelService.model_validate(defaulted)
        return PowerBudget.model_validate(defaulted)
    except pydantic.ValidationError as exc:
        raise InvalidObject(kind, name, describe(exc)) from None
