{{/* "true" when a monitoring object is wanted: enabled true, or "auto" and the cluster
serves the Prometheus Operator's monitoring.coreos.com/v1 kind. Takes (list $ setting kind). */}}
{{- define "kubetier.monitoringEnabled" -}}
{{- $ctx := index . 0 -}}{{- $setting := toString (index . 1) -}}{{- $kind := index . 2 -}}
{{- if or (eq $setting "true") (and (eq $setting "auto") ($ctx.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind))) -}}
true
{{- end -}}
{{- end -}}
