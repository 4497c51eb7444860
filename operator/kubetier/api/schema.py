"""pydantic JSON Schema -> Kubernetes *structural* OpenAPI v3 schema.

pydantic emits JSON Schema 2020-12 with ``$defs``/``$ref``, ``anyOf [X, null]`` for
optional fields and numeric ``exclusiveMinimum``; a CRD wants every node typed and
inlined (structural), OpenAPI 3.0 booleans for exclusive bounds, and no
``additionalProperties: false`` beside ``properties`` (the apiserver prunes instead).
"""

from __future__ import annotations

import copy
from typing import Any

# JSON Schema keywords a structural schema may carry; anything else pydantic emits
# (title, additionalProperties: false, ...) is dropped.
_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "anyOf",
}


def structural(json_schema: dict[str, Any]) -> dict[str, Any]:
    """Convert one pydantic model's ``model_json_schema(by_alias=True)`` output."""
    defs = json_schema.get("$defs", {})
    return _convert(json_schema, defs)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a ``$ref`` (and pydantic's ``allOf: [{$ref}]``), keeping sibling keys."""
    node = dict(node)
    if "allOf" in node and len(node["allOf"]) == 1:
        node.update(node.pop("allOf")[0])
    while "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        # Keys on the referencing node (description, default) win over the definition's.
        node = {**target, **node}
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) == 1:
            # Optional[X]: the field is simply omitted when unset; None is no default.
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", "absent") is None:
                rest.pop("default")
            node = {**_resolve(branches[0], defs), **rest}
        else:
            raise ValueError(f"cannot express anyOf {node['anyOf']!r} structurally")

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):  # a map (dict[str, str]); `false` is dropped
                out[key] = _convert(value, defs)
        else:
            out[key] = copy.deepcopy(value)

    # OpenAPI 3.0 (what the apiserver speaks) writes exclusive bounds as booleans.
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(exclusive), (int, float)) and not isinstance(out.get(exclusive), bool):
            out[bound] = out[exclusive]
            out[exclusive] = True

    if out.get("type") == "object" and "properties" in out:
        required = set(out.get("required", ()))
        for name, sub in out["properties"].items():
            # An optional nested object whose fields all have defaults defaults to those
            # defaults, so the apiserver fills its fields in too and GitOps diffs stay
            # clean. Not `{}`: the apiserver checks a default against the object's CEL
            # rules as written, and `self.min <= self.max` fails on `{}` ("no such key").
            if (
                name not in required
                and "default" not in sub
                and sub.get("type") == "object"
                and "properties" in sub
                and not sub.get("required")
                # A one-of (`has(self.a) ... has(self.b)`, e.g. model.cache: claimName or
                # image): defaulting the object would make it present with neither set.
                and not any("has(self." in r.get("rule", "") for r in sub.get("x-kubernetes-validations", ()))
            ):
                filled = {k: copy.deepcopy(v["default"]) for k, v in sub["properties"].items() if "default" in v}
                # Nothing to fill in (e.g. a one-of like env[].valueFrom): no default, or
                # `{}` would appear on every object and fail its one-of rule.
                if filled:
                    sub["default"] = filled
                    out["properties"][name] = _ordered(sub)
        if not out.get("required"):
            out.pop("required", None)
    return _ordered(out)


# Reading order for a schema node in the generated YAML: what it is, then its bounds,
# then its children, then the rules over them.
_ORDER = [
    "type",
    "format",
    "description",
    "default",
    "enum",
    "pattern",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "required",
    "properties",
    "items",
    "additionalProperties",
    "anyOf",
    "x-kubernetes-validations",
]


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    return {key: node[key] for key in _ORDER if key in node}
