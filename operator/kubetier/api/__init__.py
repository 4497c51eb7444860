"""kubetier's API: pydantic models of ModelService and PowerBudget, the single source
of truth for the CRDs (``kubetier crds``). Pure: no Kubernetes or HTTP client here."""

from kubetier.api.modelservice import GROUP, VERSION, ModelService, ModelServiceSpec, Tier
from kubetier.api.powerbudget import PowerBudget, PowerBudgetSpec
from kubetier.api.validation import InvalidObject, admit

__all__ = [
    "GROUP",
    "VERSION",
    "InvalidObject",
    "ModelService",
    "ModelServiceSpec",
    "PowerBudget",
    "PowerBudgetSpec",
    "Tier",
    "admit",
]
