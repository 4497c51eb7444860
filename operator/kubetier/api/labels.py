"""Every label, annotation and resource name two parts of kubetier agree on.

The operator writes these keys; the router's discovery, the node agent and the local
development tools read them. They are written here once (docs/contracts.md lists them).
"""

from __future__ import annotations

from typing import Final

DOMAIN: Final = "kubetier.io"

# --------------------------------------------------------------------------- kubetier's own keys

# Which ModelService an object belongs to (every child, the routing ConfigMap, the pods).
SERVICE_LABEL: Final = "kubetier.io/service"
# Which SLO tier a Deployment, Service, PodDisruptionBudget or pod serves.
TIER_LABEL: Final = "kubetier.io/tier"
# serving (the router routes to it) or standby (warm, not routed to).
ROLE_LABEL: Final = "kubetier.io/role"
ROLE_SERVING: Final = "serving"
ROLE_STANDBY: Final = "standby"
# Which of a tier's Deployments a pod belongs to (main, floor, standby): keeps the
# selectors of a tier's Deployments disjoint.
POOL_LABEL: Final = "kubetier.io/pool"
# Its value on the pods of a ModelService's shared pool (spec.sharedPool): they carry no
# tier label; the router puts each in one tier's bin and moves it as load shifts.
SHARED_POOL: Final = "shared"
# "true" on the routing ConfigMap the router discovers (docs/contracts.md).
ROUTING_CONFIG_LABEL: Final = "kubetier.io/routing-config"
# Local development only (KWOK pods run no containers): "127.0.0.1:<port>" of the
# simulator process standing in for the pod, used by a router started with
# --local-endpoints.
LOCAL_ENDPOINT_ANNOTATION: Final = "kubetier.io/local-endpoint"
# On a standby pod whose engine loaded and was put to sleep ("level1"; "awake" for an
# engine without sleep mode): only such standbys are promoted (docs/autoscaling.md).
STANDBY_ASLEEP_ANNOTATION: Final = "kubetier.io/standby-asleep"
# When a standby pod was promoted into serving (RFC 3339); its pool label is then "promoted".
PROMOTED_AT_ANNOTATION: Final = "kubetier.io/promoted-at"
POOL_PROMOTED: Final = "promoted"

# --------------------------------------------------------------------------- well-known keys

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "kubetier"
# On objects that belong to kubetier's installation rather than to a ModelService (RBAC).
PART_OF_LABEL: Final = "app.kubernetes.io/part-of"
# Karpenter's capacity type (on-demand | spot); also what the local cluster's fake nodes carry.
CAPACITY_TYPE_LABEL: Final = "karpenter.sh/capacity-type"
CAPACITY_ON_DEMAND: Final = "on-demand"
CAPACITY_SPOT: Final = "spot"
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
# The NVIDIA device plugin's extended resource and GPU feature discovery's product label.
GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
# ReplicaSets delete the pod with the lowest cost first on scale-in.
POD_DELETION_COST_ANNOTATION: Final = "controller.kubernetes.io/pod-deletion-cost"

# --------------------------------------------------------------------------- selectors

# Label selectors as the Kubernetes API takes them.
ROUTING_CONFIG_SELECTOR: Final = f"{ROUTING_CONFIG_LABEL}=true"
SERVING_POD_SELECTOR: Final = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{ROLE_LABEL}={ROLE_SERVING}"

# --------------------------------------------------------------------------- spot capacity and notices

# The spot controller (and the node agent, from the cloud metadata endpoint) write the
# expected end of a node, RFC 3339, and who said so (aws | gcp | azure | a taint's source),
# on the Node and on each kubetier pod it drains there.
PREEMPTION_DEADLINE_ANNOTATION: Final = "kubetier.io/preemption-deadline"
PREEMPTION_SOURCE_ANNOTATION: Final = "kubetier.io/preemption-source"
# On a pod under notice: until when the router still sends it new requests (those of its
# tier predicted to finish before the deadline: kubetier.policy.spot.admit_until).
ADMIT_UNTIL_ANNOTATION: Final = "kubetier.io/admit-until"
# Taints that announce a node's end: Karpenter v1 (and its older value-carrying key),
# AWS Node Termination Handler (with TAINT_NODE=true), GKE graceful node shutdown.
KARPENTER_DISRUPTED_TAINT: Final = "karpenter.sh/disrupted"
KARPENTER_DISRUPTION_TAINT: Final = "karpenter.sh/disruption"
NTH_SPOT_INTERRUPTION_TAINT: Final = "aws-node-termination-handler/spot-itn"
NTH_REBALANCE_TAINT: Final = "aws-node-termination-handler/rebalance-recommendation"
NTH_ASG_TERMINATION_TAINT: Final = "aws-node-termination-handler/asg-lifecycle-termination"
NTH_MAINTENANCE_TAINT: Final = "aws-node-termination-handler/scheduled-maintenance"
GKE_TERMINATION_TAINT: Final = "cloud.google.com/impending-node-termination"
# Capacity-type node labels per platform (CAPACITY_TYPE_LABEL above is Karpenter's).
EKS_CAPACITY_TYPE_LABEL: Final = "eks.amazonaws.com/capacityType"
GKE_SPOT_LABEL: Final = "cloud.google.com/gke-spot"
GKE_PREEMPTIBLE_LABEL: Final = "cloud.google.com/gke-preemptible"
AKS_PRIORITY_LABEL: Final = "kubernetes.azure.com/scalesetpriority"
