{{/* Object-name prefix: "kubetier" for a release called kubetier, else "<release>-kubetier". */}}
{{- define "kubetier.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubetier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. Takes a dict: {"ctx": $, "component": "operator"}. */}}
{{- define "kubetier.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{ include "kubetier.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: kubetier
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kubetier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetier.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* registry/repository@digest, or registry/repository:tag (tag defaults to appVersion). */}}
{{- define "kubetier.image" -}}
{{- $repo := .Values.image.repository -}}
{{- with .Values.image.registry }}{{ $repo = printf "%s/%s" . $repo }}{{ end -}}
{{- if .Values.image.digest -}}
{{ $repo }}@{{ .Values.image.digest }}
{{- else -}}
{{ $repo }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- define "kubetier.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "kubetier.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubetier.router.serviceAccountName" -}}
{{- if .Values.router.serviceAccount.create -}}
{{- default (printf "%s-router" (include "kubetier.fullname" .)) .Values.router.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.router.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubetier.nodeAgent.serviceAccountName" -}}
{{- if .Values.nodeAgent.serviceAccount.create -}}
{{- default (printf "%s-node-agent" (include "kubetier.fullname" .)) .Values.nodeAgent.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.nodeAgent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The router's in-cluster base URL, reported by the operator as status.endpoint. */}}
{{- define "kubetier.router.url" -}}
http://{{ .Values.router.service.name }}.{{ .Release.Namespace }}.svc:{{ .Values.router.service.port }}/v1
{{- end -}}

{{/* Pod and container security contexts (PodSecurity "restricted"). */}}
{{- define "kubetier.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}
{{- define "kubetier.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{/* --namespace flags for the operator/router when watchNamespaces is set. */}}
{{- define "kubetier.namespaceArgs" -}}
{{- if .Values.watchNamespaces }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
{{- end -}}

{{/* Cross-field checks that JSON schema cannot express; each message names the values key. */}}
{{- define "kubetier.validate" -}}
{{- if and .Values.networkPolicy.enabled (not .Values.router.enabled) (not .Values.operator.enabled) -}}
{{- fail "networkPolicy.enabled=true but neither operator nor router is enabled: nothing to protect" -}}
{{- end -}}
{{- if and (not .Values.operator.serviceAccount.create) (not .Values.operator.serviceAccount.name) .Values.operator.enabled -}}
{{- fail "operator.serviceAccount.create=false needs operator.serviceAccount.name: the operator must not run as the namespace's default ServiceAccount" -}}
{{- end -}}
{{- if and (not .Values.router.serviceAccount.create) (not .Values.router.serviceAccount.name) .Values.router.enabled -}}
{{- fail "router.serviceAccount.create=false needs router.serviceAccount.name: the router must not run as the namespace's default ServiceAccount" -}}
{{- end -}}
{{- if and .Values.router.enabled (gt (len .Values.watchNamespaces) 1) -}}
{{- fail (printf "watchNamespaces has %d entries but `kubetier router` watches one namespace or all: set router.enabled=false and install a router per namespace, or leave watchNamespaces empty" (len .Values.watchNamespaces)) -}}
{{- end -}}
{{- end -}}
