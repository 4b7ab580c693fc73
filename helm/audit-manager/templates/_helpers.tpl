{{- define "audit-manager.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "audit-manager.selectorLabels" -}}
app.kubernetes.io/name: audit-manager
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "audit-manager.labels" -}}
{{ include "audit-manager.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "audit-manager.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The service's YAML configuration: values.config plus what the chart owns. */}}
{{- define "audit-manager.config" -}}
{{- $owned := dict
      "roles" .Values.roles
      "http" (dict "listen" (printf "0.0.0.0:%d" (int .Values.containerPort)))
      "spool" (dict "path" "/var/lib/audit-manager/spool" "max_bytes" (int64 .Values.spool.maxBytes))
      "kafka" (dict "topic_partitions" (int .Values.topicInit.partitions) "topic_replication" (int .Values.topicInit.replication)) -}}
{{- $config := mergeOverwrite (deepCopy .Values.config) $owned -}}
{{- dict "audit_manager" $config | toYaml -}}
{{- end -}}

{{/* Database settings: plain values for what is not secret, secretKeyRef for what is. */}}
{{- define "audit-manager.databaseEnv" -}}
- name: DB_HOST
  value: {{ .Values.database.host | quote }}
- name: DB_PORT
  value: {{ .Values.database.port | quote }}
- name: DB_NAME
  value: {{ .Values.database.name | quote }}
- name: DB_USER
  value: {{ .Values.database.user | quote }}
{{- if .Values.database.existingSecret }}
- name: DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.passwordKey }}
{{- end }}
{{- if .Values.database.urlSecret.name }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.urlSecret.name }}
      key: {{ .Values.database.urlSecret.key }}
{{- end }}
{{- end -}}
