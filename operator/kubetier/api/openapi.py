"""Apply a generated CRD schema the way the apiserver does, without an apiserver.

``default(schema, obj)`` fills in schema defaults (structural defaulting);
``check(schema, obj)`` reports OpenAPI violations in the apiserver's words
(``spec.tiers[0].ttftMs in body should be greater than 0``,
``spec.tiers[1].capacity.spot: Unsupported value: ...``). CEL rules are not evaluated
here: their pydantic twins in ``kubetier.api`` carry the same messages. Used by
``kubetier render`` and the unit tests; the real apiserver remains the authority
(e2e tests apply the same samples to it).
"""

from __future__ import annotations

import copy
import re
from typing import Any


def default(schema: dict[str, Any], obj: Any) -> Any:
    obj = copy.deepcopy(obj)
    _default(schema, obj)
    return obj


def _default(schema: dict[str, Any], obj: Any) -> None:
    if isinstance(obj, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                _default(sub, obj[name])
    elif isinstance(obj, list) and "items" in schema:
        for item in obj:
            _default(schema["items"], item)


_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def _type_ok(kind: str, value: Any) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[kind])


def check(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    errors: list[str] = []
    _check(schema, obj, path, errors)
    return errors


def _fmt(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def _check(schema: dict[str, Any], value: Any, path: str, errors: list[str]) -> None:
    where = path or "<root>"
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append(f"{where}: Invalid value: {_fmt(value)}: must be an integer or a string")
        return
    kind = schema.get("type")
    if kind and not _type_ok(kind, value):
        errors.append(f'{where}: Invalid value: "{type(value).__name__}": {where} in body must be of type {kind}')
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_fmt(v) for v in schema["enum"])
        errors.append(f"{where}: Unsupported value: {_fmt(value)}: supported values: {supported}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            if schema.get("exclusiveMinimum") and value <= schema["minimum"]:
                errors.append(
                    f"{where}: Invalid value: {value}: {where} in body should be greater than {schema['minimum']}"
                )
            elif value < schema["minimum"]:
                errors.append(
                    f"{where}: Invalid value: {value}: {where} in body should be greater than or equal to {schema['minimum']}"
                )
        if "maximum" in schema:
            if schema.get("exclusiveMaximum") and value >= schema["maximum"]:
                errors.append(
                    f"{where}: Invalid value: {value}: {where} in body should be less than {schema['maximum']}"
                )
            elif value > schema["maximum"]:
                errors.append(
                    f"{where}: Invalid value: {value}: {where} in body should be less than or equal to {schema['maximum']}"
                )
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: Invalid value: {_fmt(value)}: {where} in body should match '{schema['pattern']}'")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: Too long: may not be more than {schema['maxLength']} bytes")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(
                f"{where}: Invalid value: {_fmt(value)}: {where} in body should be at least {schema['minLength']} chars long"
            )
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(
                f"{where}: Invalid value: {len(value)}: {where} in body should have at least {schema['minItems']} items"
            )
        for i, item in enumerate(value):
            _check(schema.get("items", {}), item, f"{path}[{i}]", errors)
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                errors.append(f"{_join(path, name)}: Required value")
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for name, sub in value.items():
            if props is not None and name in props:
                _check(props[name], sub, _join(path, name), errors)
            elif isinstance(extra, dict):
                _check(extra, sub, _join(path, name), errors)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields") and path:
                # The apiserver prunes unknown fields silently (or rejects them under
                # kubectl's strict field validation); we report them so typos surface.
                errors.append(f'{_join(path, name)}: unknown field "{name}"')


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
