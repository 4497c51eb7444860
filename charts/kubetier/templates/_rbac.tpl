{{- /*
Least-privilege rules, written out by hand so a reviewer reads exactly what the chart
grants. tests/chart/test_chart_rbac.py renders the chart and fails when they differ
from the rules the code declares it uses (kubetier.operator.rbac.RULES; the router's
from its discovery code).
*/ -}}

{{/* Operator rules on cluster-scoped resources (and kopf's own): always a ClusterRole. */}}
{{- define "kubetier.operator.clusterScopedRules" -}}
# kopf notices CRDs and namespaces appearing at runtime.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
# kopf peering objects (read/patched only when peering is on).
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings, kopfpeerings]
  verbs: [get, list, watch, patch]
# GPU allocatable and capacity type, for status and placement (a watch cache); the spot
# controller watches the same Nodes for preemption notices; the PowerBudget controller
# reads the node agents' power reports from them and writes its caps (annotation
# kubetier.io/power-cap).
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch, patch]
# PowerBudgets (cluster-scoped): a kopf timer per domain; status written every tick.
- apiGroups: [kubetier.io]
  resources: [powerbudgets]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetier.io]
  resources: [powerbudgets/status]
  verbs: [get, patch]
{{- end -}}

{{/* Operator rules on namespaced resources: in the ClusterRole, or a Role per watched namespace. */}}
{{- define "kubetier.operator.namespacedRules" -}}
# ModelServices: watched; patched for kopf's finalizer and annotations (never spec).
- apiGroups: [kubetier.io]
  resources: [modelservices]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetier.io]
  resources: [modelservices/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Children, applied server-side and pruned when no longer desired; watched into a cache.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# Pods of each tier (readiness, spot placement): read only, watched.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# The autoscaler marks the scale-in victim (controller.kubernetes.io/pod-deletion-cost).
- apiGroups: [""]
  resources: [pods]
  verbs: [patch]
# The router Service's EndpointSlices: the operator reads every router replica's status.
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
# The spot controller marks pods on a noticed node with the deadline and deletes them
# with a grace period so their replacements start at once.
- apiGroups: [""]
  resources: [pods]
  verbs: [patch, delete]
{{- end -}}

{{/* Router discovery (kubetier.router.discovery) lists once, then watches; it never writes. */}}
{{- define "kubetier.router.rules" -}}
# <ms>-routing ConfigMaps and the model-server pods.
- apiGroups: [""]
  resources: [configmaps, pods]
  verbs: [list, watch]
# The API-key Secrets named in spec.access, read one by one.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end -}}

{{/* Router rules on cluster-scoped resources: always a ClusterRole. */}}
{{- define "kubetier.router.clusterScopedRules" -}}
# Nodes, for their power caps (kubetier.io/power-cap, kubetier.io/power-report): a server
# on a capped node is routed with its slower, capped latency model (docs/power.md).
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
{{- end -}}
