"""The routing document: what the operator tells the router about one ModelService.

The operator writes it into ConfigMap ``<ms>-routing`` (label
``kubetier.io/routing-config: "true"``), key ``routing.json``; the router's discovery
reads every such ConfigMap. Both sides use :class:`RoutingDocument`: the operator builds
one from the ModelService and serialises it with :meth:`RoutingDocument.to_json`, the
router parses it with :meth:`RoutingDocument.from_json`.

Version skew: the document and its tiers ignore fields they do not know, so an operator
that adds a field does not break a router one version behind. The embedded latency
profile is strict (its format is the same everywhere, docs/contracts.md).
"""

from __future__ import annotations

import json
from typing import Final

from pydantic import Field

from kubetier.api.common import MAX_ACCESS_ENTRIES, MAX_TIERS, DocumentModel, api_config
from kubetier.api.profile import LatencyProfile
from kubetier.api.tier import SLOTier

ROUTING_KEY: Final = "routing.json"
# The same profile as a file of its own (JSON is valid YAML): the simulator engine mounts it.
PROFILE_KEY: Final = "profile.yaml"
ROUTING_CONFIGMAP_SUFFIX: Final = "-routing"
# The key of an access Secret (spec.access[].secretRef) that holds the API key.
API_KEY_SECRET_KEY: Final = "api-key"


def routing_configmap_name(service: str) -> str:
    return f"{service}{ROUTING_CONFIGMAP_SUFFIX}"


class RoutingTier(SLOTier):
    """An SLO tier inside a routing document (extra fields ignored: see the module docstring)."""

    model_config = api_config(extra="ignore")


class AccessEntry(DocumentModel):
    secret_name: str = Field(min_length=1, max_length=253, description="Secret in the service's namespace.")
    tiers: list[str] = Field(default_factory=list, max_length=MAX_TIERS, description="Tiers its key may use.")


class PoolBin(DocumentModel):
    tier: str = Field(min_length=1, description="A tier whose bin the pool's servers may serve.")
    min_servers: int = Field(default=0, ge=0, description="Fewest pool servers in the tier's bin.")
    max_servers: int | None = Field(default=None, ge=1, description="Most pool servers in the tier's bin.")


class RoutingPool(DocumentModel):
    """The service's serving pods form one shared pool (pod label ``kubetier.io/pool:
    shared``, no tier label): the router puts each in one tier's bin and moves idle
    servers between bins (``kubetier.policy.bins``) within these per-tier limits."""

    bins: list[PoolBin] = Field(min_length=1, max_length=MAX_TIERS)


class RoutingDocument(DocumentModel):
    model: str = Field(min_length=1, max_length=256, description="The `model` clients send.")
    namespace: str | None = Field(default=None, description="The ModelService's namespace.")
    service: str | None = Field(default=None, description="The ModelService's name.")
    tiers: list[RoutingTier] = Field(min_length=1, max_length=MAX_TIERS)
    profile: LatencyProfile
    access: list[AccessEntry] = Field(
        default_factory=list,
        max_length=MAX_ACCESS_ENTRIES,
        description="Which Secrets' keys may use which tiers; empty: no authentication, every tier open.",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Port the engines serve HTTP on.")
    shared_pool: RoutingPool | None = Field(
        default=None, description="Set when the servers are one shared pool with dynamic bins (spec.sharedPool)."
    )

    def to_json(self) -> str:
        # sort_keys: the same spec always renders byte-identical data, so an unchanged
        # service never looks changed.
        return json.dumps(self.wire(), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> RoutingDocument:
        """Parse ``routing.json``; raises ``pydantic.ValidationError`` (describe it with
        ``kubetier.api.errors.describe``)."""
        return cls.model_validate_json(text)
