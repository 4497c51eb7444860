"""Resolve a ModelService's latency profile to its contract-shaped dict (pure)."""

from __future__ import annotations

from typing import Any

import yaml

from kubetier.api.modelservice import ModelServiceSpec
from kubetier.policy.latency import LatencyModel, ProfileError, load_profile


class Unsatisfiable(Exception):
    """The spec cannot be realised as it stands; becomes Degraded=True with ``reason``."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


def resolve_profile(spec: ModelServiceSpec, configmap_data: dict[str, str] | None) -> dict[str, Any]:
    source = spec.latency_profile
    try:
        if source.builtin is not None:
            return load_profile(source.builtin).to_dict()
        if source.inline is not None:
            return LatencyModel.from_api(source.inline).to_dict()
        ref = source.config_map_ref
        assert ref is not None  # the API guarantees exactly one source
        if configmap_data is None:
            raise Unsatisfiable(
                "ProfileNotFound", f"spec.latencyProfile.configMapRef: ConfigMap {ref.name!r} not found"
            )
        if ref.key not in configmap_data:
            raise Unsatisfiable(
                "ProfileNotFound", f"spec.latencyProfile.configMapRef: ConfigMap {ref.name!r} has no key {ref.key!r}"
            )
        try:
            raw = yaml.safe_load(configmap_data[ref.key])
        except yaml.YAMLError as exc:
            raise Unsatisfiable(
                "ProfileInvalid", f"spec.latencyProfile.configMapRef: {ref.name}/{ref.key}: {exc}"
            ) from None
        return LatencyModel.from_dict(raw).to_dict()
    except ProfileError as exc:
        raise Unsatisfiable("ProfileInvalid", f"spec.latencyProfile: {exc}") from None
