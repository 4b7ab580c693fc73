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

{{/* forward.target: kafka (default) or postgres (Kafka-less). */}}
{{- define "audit-manager.target" -}}
{{- (.Values.forward | default dict).target | default "kafka" -}}
{{- end -}}

{{/* The roles the pods run, as YAML: values.roles, or every role of the forward.target shape
     when it is empty. */}}
{{- define "audit-manager.roles" -}}
{{- $roles := .Values.roles -}}
{{- if not $roles -}}
{{- $roles = ternary (list "ingest" "forward" "maintain") (list "ingest" "forward" "sink" "maintain") (eq (include "audit-manager.target" .) "postgres") -}}
{{- end -}}
{{- toYaml $roles -}}
{{- end -}}

{{/* The seal directory's volume source (integrity.sealDir), as YAML; empty when none. */}}
{{- define "audit-manager.sealDirVolume" -}}
{{- with .Values.integrity.sealDir -}}
{{- if .existingClaim -}}
{{- toYaml (dict "persistentVolumeClaim" (dict "claimName" .existingClaim)) -}}
{{- else if .volume -}}
{{- toYaml .volume -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The service's YAML configuration: values.config plus what the chart owns. */}}
{{- define "audit-manager.config" -}}
{{- $target := include "audit-manager.target" . -}}
{{- $roles := include "audit-manager.roles" . | fromYamlArray -}}
{{- $owned := dict
      "roles" $roles
      "http" (dict "listen" (printf "0.0.0.0:%d" (int .Values.containerPort)))
      "spool" (dict "path" "/var/lib/audit-manager/spool" "max_bytes" (int64 .Values.spool.maxBytes)) -}}
{{- if eq $target "postgres" -}}
{{- if has "sink" $roles -}}
{{- fail "roles: sink has nothing to consume with forward.target postgres (the forward role stores the events itself): leave roles empty or drop sink" -}}
{{- end -}}
{{- if or .Values.kafkaSasl.mechanism .Values.tls.kafka.enabled .Values.tls.kafka.secretName -}}
{{- fail "kafkaSasl and tls.kafka configure the connection to Kafka, and forward.target postgres has none: unset them (or use forward.target kafka)" -}}
{{- end -}}
{{- /* kafka is the service's default: only the Kafka-less shape names its target. */ -}}
{{- $_ := set $owned "forward" (dict "target" "postgres") -}}
{{- /* No seal topic without Kafka: the off-database copy goes to integrity.sealDir. */ -}}
{{- $_ := set $owned "integrity" (dict "seal_topic" "") -}}
{{- else -}}
{{- $_ := set $owned "kafka" (dict "topic_partitions" (int .Values.topicInit.partitions) "topic_replication" (int .Values.topicInit.replication)) -}}
{{- end -}}
{{- if include "audit-manager.sealDirVolume" . -}}
{{- $integrity := $owned.integrity | default dict -}}
{{- $_ := set $integrity "seal_dir" .Values.integrity.sealDir.path -}}
{{- $_ := set $owned "integrity" $integrity -}}
{{- end -}}
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
{{- $pg := .Values.tls.postgres -}}
{{- if or $pg.sslmode $pg.secretName -}}
{{- $query := list (printf "sslmode=%s" (default "verify-full" $pg.sslmode)) -}}
{{- if $pg.secretName -}}
{{- $dir := "/run/secrets/audit-manager/postgres-tls" -}}
{{- if $pg.caKey }}{{ $query = append $query (printf "sslrootcert=%s/%s" $dir $pg.caKey) }}{{ end -}}
{{- if $pg.certKey }}{{ $query = append $query (printf "sslcert=%s/%s" $dir $pg.certKey) }}{{ end -}}
{{- if $pg.keyKey }}{{ $query = append $query (printf "sslkey=%s/%s" $dir $pg.keyKey) }}{{ end -}}
{{- end -}}
{{- /* Host, port, name, user and password come from DB_* over this URL; its query stays. */ -}}
{{- $url := printf "postgres://%s:%d/%s?%s" .Values.database.host (int .Values.database.port) .Values.database.name (join "&" $query) -}}
{{- $_ := set $owned "database" (dict "url" $url) -}}
{{- end -}}
{{- $kafka := include "audit-manager.kafkaProperties" . | fromYaml -}}
{{- if and $kafka (eq $target "kafka") -}}
{{- $_ := set $owned.kafka "producer" $kafka -}}
{{- $_ := set $owned.kafka "consumer" (deepCopy $kafka) -}}
{{- end -}}
{{- $base := deepCopy .Values.config -}}
{{- if eq $target "postgres" -}}
{{- /* Kafka settings (the values' defaults included) mean nothing without Kafka. */ -}}
{{- $base = omit $base "kafka" -}}
{{- end -}}
{{- $config := mergeOverwrite $base $owned -}}
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


{{/* librdkafka security properties of the producer and the consumer, from tls.kafka and
     kafkaSasl (the SASL password comes through the environment: audit-manager.kafkaEnv). */}}
{{- define "audit-manager.kafkaProperties" -}}
{{- $tls := .Values.tls.kafka -}}
{{- $sasl := .Values.kafkaSasl -}}
{{- $props := dict -}}
{{- $secure := or $tls.enabled $tls.secretName -}}
{{- if $sasl.mechanism -}}
{{- $_ := set $props "security.protocol" (ternary "sasl_ssl" "sasl_plaintext" (not (not $secure))) -}}
{{- $_ := set $props "sasl.mechanism" $sasl.mechanism -}}
{{- if $sasl.username }}{{ $_ := set $props "sasl.username" $sasl.username }}{{ end -}}
{{- else if $secure -}}
{{- $_ := set $props "security.protocol" "ssl" -}}
{{- end -}}
{{- if $tls.secretName -}}
{{- $dir := "/run/secrets/audit-manager/kafka-tls" -}}
{{- if $tls.caKey }}{{ $_ := set $props "ssl.ca.location" (printf "%s/%s" $dir $tls.caKey) }}{{ end -}}
{{- if $tls.certKey }}{{ $_ := set $props "ssl.certificate.location" (printf "%s/%s" $dir $tls.certKey) }}{{ end -}}
{{- if $tls.keyKey }}{{ $_ := set $props "ssl.key.location" (printf "%s/%s" $dir $tls.keyKey) }}{{ end -}}
{{- end -}}
{{- if $props }}{{ toYaml $props }}{{ end -}}
{{- end -}}

{{/* The SASL password of the producer and the consumer, from its Secret. */}}
{{- define "audit-manager.kafkaEnv" -}}
{{- with .Values.kafkaSasl.passwordSecret -}}
{{- if .name }}
- name: AUDIT_MANAGER__KAFKA__PRODUCER__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
- name: AUDIT_MANAGER__KAFKA__CONSUMER__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Read-only mounts of the backend TLS Secrets (tls.postgres, tls.kafka). */}}
{{- define "audit-manager.backendTlsMounts" -}}
{{- if .Values.tls.postgres.secretName }}
- name: postgres-tls
  mountPath: /run/secrets/audit-manager/postgres-tls
  readOnly: true
{{- end }}
{{- if .Values.tls.kafka.secretName }}
- name: kafka-tls
  mountPath: /run/secrets/audit-manager/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "audit-manager.backendTlsVolumes" -}}
{{- if .Values.tls.postgres.secretName }}
- name: postgres-tls
  secret:
    secretName: {{ .Values.tls.postgres.secretName }}
    defaultMode: 0400
{{- end }}
{{- if .Values.tls.kafka.secretName }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.tls.kafka.secretName }}
    defaultMode: 0400
{{- end }}
{{- end -}}
