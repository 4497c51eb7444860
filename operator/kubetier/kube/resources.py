"""Where each kind lives in the Kubernetes REST API (pure: paths only, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from kubetier.api.modelservice import GROUP, PLURAL, VERSION


@dataclass(frozen=True)
class Resource:
    prefix: str  # "/api/v1" or "/apis/<group>/<version>"
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return self.prefix.removeprefix("/apis/").removeprefix("/api/")

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        out = self.prefix
        if self.namespaced and namespace:
            out += f"/namespaces/{namespace}"
        out += f"/{self.plural}"
        if name:
            out += f"/{name}"
        if subresource:
            out += f"/{subresource}"
        return out


RESOURCES: dict[str, Resource] = {
    "ConfigMap": Resource("/api/v1", "configmaps"),
    "Secret": Resource("/api/v1", "secrets"),
    "Service": Resource("/api/v1", "services"),
    "Endpoints": Resource("/api/v1", "endpoints"),
    "Pod": Resource("/api/v1", "pods"),
    "Event": Resource("/api/v1", "events"),
    "Node": Resource("/api/v1", "nodes", namespaced=False),
    "Namespace": Resource("/api/v1", "namespaces", namespaced=False),
    "Deployment": Resource("/apis/apps/v1", "deployments"),
    "EndpointSlice": Resource("/apis/discovery.k8s.io/v1", "endpointslices"),
    "PodDisruptionBudget": Resource("/apis/policy/v1", "poddisruptionbudgets"),
    "ModelService": Resource(f"/apis/{GROUP}/{VERSION}", PLURAL),
}


def resource(kind: str) -> Resource:
    try:
        return RESOURCES[kind]
    except KeyError:
        raise KeyError(f"kind {kind!r} is not in kubetier.kube.resources.RESOURCES") from None
