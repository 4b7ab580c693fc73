{{- define "audit-manager.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "audit-manager.labels" -}}
app.kubernetes.io/name: audit-manager
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
