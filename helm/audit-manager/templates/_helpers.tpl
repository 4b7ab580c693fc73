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
{{- if .Values.tls.secretName -}}
{{- $tls := dict "cert_file" "/run/secrets/audit-manager/tls/tls.crt" "key_file" "/run/secrets/audit-manager/tls/tls.key" -}}
{{- if eq .Values.auth.mode "mtls" -}}
{{- $_ := set $tls "client_ca_file" "/run/secrets/audit-manager/tls/ca.crt" -}}
{{- end -}}
{{- $_ := set $owned.http "tls" $tls -}}
{{- end -}}
{{- if ne .Values.auth.mode "none" -}}
{{- if not .Values.auth.tokensSecret -}}
{{- fail (printf "auth.mode %s needs auth.tokensSecret: the Secret holding the principals file" .Values.auth.mode) -}}
{{- end -}}
{{- if and (eq .Values.auth.mode "mtls") (not .Values.tls.secretName) -}}
{{- fail "auth.mode mtls needs tls.secretName: a Secret with tls.crt, tls.key and ca.crt (the CA of the client certificates)" -}}
{{- end -}}
{{- $_ := set $owned "auth" (dict "mode" .Values.auth.mode "tokens_file" (printf "/run/secrets/audit-manager/auth/%s" .Values.auth.tokensKey)) -}}
{{- end -}}
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
