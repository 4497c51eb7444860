"""kubetier's one Kubernetes access layer (httpx, async), used by the operator, the
router's discovery and the node agent.

- ``connection``: where the API server is and which credentials to use (in-cluster
  ServiceAccount, kubeconfig, or kopf's login);
- ``client.KubeClient``: typed get/list/watch/apply/patch/create/delete over plain
  dicts, with per-verb request counts;
- ``resources``: the REST path of each kind;
- ``events``: Event bodies;
- ``informer``: list once, then watch into an in-memory cache.
"""

from kubetier.kube.client import KubeClient, KubeError, RequestCounts, WatchEvent, WatchExpired
from kubetier.kube.connection import ConnectionInfo, KubeConfigError, discover, from_kubeconfig, in_cluster
from kubetier.kube.resources import RESOURCES, Resource

__all__ = [
    "RESOURCES",
    "ConnectionInfo",
    "KubeClient",
    "KubeConfigError",
    "KubeError",
    "RequestCounts",
    "Resource",
    "WatchEvent",
    "WatchExpired",
    "discover",
    "from_kubeconfig",
    "in_cluster",
]
