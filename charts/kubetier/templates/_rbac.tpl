{{- /*
Least-privilege rules. These lists are written out by hand on purpose, so that a
reviewer reads exactly what the chart grants; tests/chart/test_rbac.py renders the
chart and fails when they differ from the rules the code declares it uses
(kubetier.operator.rbac, kubetier.router.rbac).
*/ -}}

{{/* Operator rules on namespaced resources: ClusterRole, or a Role per watched namespace. */}}
{{- define "kubetier.operator.namespacedRules" -}}
- apiGroups: [kubetier.io]
  resources: [modelservices]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetier.io]
  resources: [modelservices/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/* Operator rules on cluster-scoped resources: always a ClusterRole. */}}
{{- define "kubetier.operator.clusterRules" -}}
- apiGroups: [kubetier.io]
  resources: [powerbudgets]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetier.io]
  resources: [powerbudgets/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end -}}

{{/* kopf peering (only with operator.replicas > 1). */}}
{{- define "kubetier.operator.peeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings, kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end -}}

{{- define "kubetier.router.rules" -}}
- apiGroups: [""]
  resources: [pods, configmaps, secrets]
  verbs: [get, list, watch]
{{- end -}}
