"""kubetier's API: one pydantic definition for every shape two parts of kubetier
exchange, and the single source of truth for the CRDs (``kubetier crds``).

* ``modelservice``, ``powerbudget``: the custom resources;
* ``tier.SLOTier``: an SLO tier (ModelService, routing document, router config file,
  simulator scenario);
* ``profile.LatencyProfile``: the latency profile format;
* ``routing.RoutingDocument``: what the operator tells the router (ConfigMap
  ``<ms>-routing``, key ``routing.json``);
* ``router_status.RouterStatus``: the router's ``/kubetier/status`` document;
* ``labels``: every label and annotation key;
* ``errors.describe``: validation errors as ``<field path>: <message>``.

The bottom layer: pure (pydantic and yaml only), it imports no other kubetier package
(import-linter contracts in pyproject.toml, docs/contracts.md)."""

from kubetier.api.modelservice import GROUP, VERSION, ModelService, ModelServiceSpec, Tier
from kubetier.api.powerbudget import PowerBudget, PowerBudgetSpec
from kubetier.api.profile import LatencyProfile
from kubetier.api.router_status import RouterStatus
from kubetier.api.routing import RoutingDocument
from kubetier.api.tier import SLOTier
from kubetier.api.validation import InvalidObject, admit

__all__ = [
    "GROUP",
    "VERSION",
    "InvalidObject",
    "LatencyProfile",
    "ModelService",
    "ModelServiceSpec",
    "PowerBudget",
    "PowerBudgetSpec",
    "RouterStatus",
    "RoutingDocument",
    "SLOTier",
    "Tier",
    "admit",
]
