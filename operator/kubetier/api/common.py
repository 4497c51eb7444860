"""Building blocks shared by kubetier's API models.

Every model here is both a pydantic validator for Python callers and the source of a
CRD schema (see ``kubetier.api.schema``). Two conventions make that work:

* camelCase on the wire (``ttftMs``), snake_case in Python (``ttft_ms``);
* cross-field rules are written twice, side by side: as a CEL rule the apiserver
  enforces (``cel(...)`` in ``json_schema_extra``) and as a pydantic validator that
  mirrors it with the same message, so unit tests and ``kubetier render`` reject the
  same objects the cluster rejects.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

# Bounds that keep CEL cost estimation finite on the real apiserver: every list a rule
# iterates over has maxItems, every string a rule compares has maxLength.
MAX_TIERS = 8
MAX_ACCESS_ENTRIES = 32
MAX_NAME_LENGTH = 63
# Tier names become part of child object names (`<service>-<tier>-standby`), which
# Services limit to 63 characters; the ModelService name itself is capped to match.
MAX_TIER_NAME_LENGTH = 20
MAX_SERVICE_NAME_LENGTH = 32
DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes quantity (the apiserver's own regexp, shortened to what people write).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; ``message`` must name the field."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def api_config(
    *,
    rules: list[dict[str, str]] | None = None,
    extra: Literal["forbid", "ignore"] = "forbid",
    strict: bool = False,
) -> ConfigDict:
    """The model config of every API model: camelCase aliases, frozen; ``rules`` are the
    model's CEL rules (``cel(...)``); ``extra="ignore"`` for documents a newer writer may
    extend (a reader of an older version keeps working); ``strict`` refuses lax
    conversions (``1.5`` as an integer, ``true`` as a number)."""
    config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra=extra, frozen=True)
    if strict:
        config["strict"] = True
        config["allow_inf_nan"] = False
    if rules:
        config["json_schema_extra"] = cast(JsonDict, {"x-kubernetes-validations": rules})
    return config


class ApiModel(BaseModel):
    """camelCase aliases, unknown fields rejected (the apiserver prunes them; we say so)."""

    model_config = api_config()

    def wire(self) -> dict[str, Any]:
        """The object as it appears in Kubernetes YAML (camelCase, defaults filled)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class DocumentModel(ApiModel):
    """A document two running parts exchange (routing document, router status): unknown
    fields are ignored, so a reader one version behind the writer keeps working."""

    model_config = api_config(extra="ignore")

    def document(self) -> dict[str, Any]:
        """The JSON form, camelCase, with unset optional fields kept as ``null`` (a reader
        sees every field, whether or not it has a value yet)."""
        return self.model_dump(by_alias=True, mode="json")


class Condition(ApiModel):
    """The ``metav1.Condition`` shape."""

    type: str = Field(max_length=316, description="Condition type: Ready, Progressing, Degraded or SLOAtRisk.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: dt.datetime = Field(description="When status last changed.")
    observed_generation: int = Field(default=0, ge=0, description="metadata.generation the condition was computed for.")
