{{/*
Names, labels and the values every template derives from: which workers run, each worker's
merged settings, where each one is reached, and which stores the router shares.
*/}}

{{- define "serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "serving.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A resource name: the release's full name, a dash, a suffix. Call with (list $ "suffix"). */}}
{{- define "serving.component" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "serving.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "serving.labels" -}}
helm.sh/chart: {{ include "serving.chart" . }}
{{ include "serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: serving
{{- end }}

{{- define "serving.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The enabled workers of config.workers, sorted, as a YAML list. */}}
{{- define "serving.workerNames" -}}
{{- $names := list }}
{{- range $name, $w := .Values.config.workers }}
{{- if and $w (ne (toString (dig "enabled" true $w)) "false") }}
{{- $names = append $names $name }}
{{- end }}
{{- end }}
{{- toYaml (sortAlpha $names) }}
{{- end }}

{{/* One worker's Kubernetes settings: workerDefaults, each key that workers.NAME sets
replacing the default's whole (so `nodeSelector: {}` clears a default selector). Call with
(list $ NAME); the result is YAML (fromYaml it). */}}
{{- define "serving.workerValues" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $out := deepCopy $root.Values.workerDefaults }}
{{- range $key, $value := index ($root.Values.workers | default dict) $name | default dict }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* How a worker's pod stops: `drain`, the seconds its preStop hook may wait for its requests
(workers.NAME.drainSeconds, else the config's drain_timeout_s, the time a reload gives it,
else WorkerConfig's default 120), and `grace`, its terminationGracePeriodSeconds (set, else the
drain plus shutdownMarginSeconds for vLLM's own shutdown). Call with (list $ NAME). */}}
{{- define "serving.workerStop" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $w := include "serving.workerValues" . | fromYaml }}
{{- $drain := $w.drainSeconds }}
{{- if kindIs "invalid" $drain }}
{{- $drain = dig $name "drain_timeout_s" 120 $root.Values.config.workers }}
{{- end }}
{{- $drain = int (ceil $drain) }}
{{- $grace := $w.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $grace }}
{{- $grace = add $drain (int $w.shutdownMarginSeconds) }}
{{- end }}
drain: {{ $drain }}
grace: {{ int $grace }}
{{- end }}

{{/* Whether a worker is a chat pool: a chat worker with more than one replica (or an
autoscaler that may give it more), fronted by a pool router. Call with (list $ NAME); prints
"true" or nothing. */}}
{{- define "serving.isPool" -}}
{{- $w := include "serving.workerValues" . | fromYaml }}
{{- $a := $w.autoscaling | default dict }}
{{- $scaled := and (eq ($a.mode | default "none") "keda") (gt (int $a.maxReplicas) 1) }}
{{- if and (eq $w.kind "chat") (or (gt (int $w.replicas) 1) $scaled) }}true{{ end }}
{{- end }}

{{- define "serving.workerService" -}}
{{- include "serving.component" (list (index . 0) (printf "worker-%s" (index . 1))) }}
{{- end }}

{{- define "serving.poolService" -}}
{{- include "serving.component" (list (index . 0) (printf "pool-%s" (index . 1))) }}
{{- end }}

{{/* Where the router reaches a worker: its chat pool router, else its own Service. */}}
{{- define "serving.workerEndpoint" -}}
{{- $root := index . 0 }}
{{- $ns := $root.Release.Namespace }}
{{- if include "serving.isPool" . -}}
http://{{ include "serving.poolService" . }}.{{ $ns }}.svc:8000
{{- else -}}
http://{{ include "serving.workerService" . }}.{{ $ns }}.svc:8000
{{- end }}
{{- end }}

{{/* The shared stores, as the config's fields: a YAML map with database, rate_limit_store,
artifacts and artifacts_endpoint, each present only when one is configured. */}}
{{- define "serving.stores" -}}
{{- $ns := .Release.Namespace }}
{{- $out := dict }}
{{- if .Values.database.dev.enabled }}
{{- $_ := set $out "database" (printf "postgresql://serving@%s.%s.svc:5432/serving" (include "serving.component" (list . "postgresql")) $ns) }}
{{- else if .Values.database.url }}
{{- $_ := set $out "database" .Values.database.url }}
{{- end }}
{{- if .Values.rateLimitStore.dev.enabled }}
{{- $_ := set $out "rate_limit_store" (printf "redis://%s.%s.svc:6379/0" (include "serving.component" (list . "redis")) $ns) }}
{{- else if .Values.rateLimitStore.url }}
{{- $_ := set $out "rate_limit_store" .Values.rateLimitStore.url }}
{{- end }}
{{- if .Values.artifacts.dev.enabled }}
{{- $_ := set $out "artifacts" (printf "s3://%s/videos" .Values.artifacts.dev.bucket) }}
{{- $_ := set $out "artifacts_endpoint" (printf "http://%s.%s.svc:8333" (include "serving.component" (list . "s3")) $ns) }}
{{- else if .Values.artifacts.url }}
{{- $_ := set $out "artifacts" .Values.artifacts.url }}
{{- if .Values.artifacts.endpoint }}
{{- $_ := set $out "artifacts_endpoint" .Values.artifacts.endpoint }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* "true" when every router store is shared (PostgreSQL, Redis, S3), so router pods may run
side by side; nothing otherwise. */}}
{{- define "serving.sharedStores" -}}
{{- $s := include "serving.stores" . | fromYaml }}
{{- if and (hasPrefix "postgres" ($s.database | default "")) (hasPrefix "redis" ($s.rate_limit_store | default "")) (hasPrefix "s3://" ($s.artifacts | default "")) }}true{{ end }}
{{- end }}

{{/* The configured keys of config.router.api_keys, as a YAML list. */}}
{{- define "serving.apiKeys" -}}
{{- toYaml (dig "router" "api_keys" list .Values.config | default list) }}
{{- end }}

{{/* "true" when the chart generates the one admin key: no key is configured anywhere and
apiKeys.generate is on; nothing otherwise. */}}
{{- define "serving.generatesKey" -}}
{{- $keys := include "serving.apiKeys" . | fromYamlArray }}
{{- if and .Values.apiKeys.generate (not $keys) (not .Values.apiKeys.existingSecret) (not .Values.apiKeys.env) }}true{{ end }}
{{- end }}

{{/* The Secret holding the S3 credentials, or nothing. */}}
{{- define "serving.s3Secret" -}}
{{- if .Values.artifacts.dev.enabled }}
{{- include "serving.component" (list . "s3") }}
{{- else if .Values.artifacts.url }}
{{- .Values.artifacts.credentialsSecret }}
{{- end }}
{{- end }}

{{/* Environment every project pod shares: the cache, the state folder, the S3 client's. */}}
{{- define "serving.commonEnv" -}}
- name: SERVING_CACHE_DIR
  value: /var/cache/serving
- name: HF_HOME
  value: /var/cache/serving/huggingface
- name: SERVING_STATE_DIR
  value: /var/lib/serving
{{- end }}

{{/* A probe from a values block: the handler plus whatever timing the block sets. Call with
(list PATH BLOCK). */}}
{{- define "serving.httpProbe" -}}
{{- $path := index . 0 }}
{{- $block := index . 1 -}}
httpGet:
  path: {{ $path }}
  port: http
{{- with $block }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The pod-level settings every project pod shares. */}}
{{- define "serving.podCommon" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "serving.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  capabilities: {drop: [ALL]}
{{- end }}
