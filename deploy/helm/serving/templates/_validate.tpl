{{/*
Checks across values that values.schema.json cannot express. Each failure says which value to
change, so a bad release fails at render instead of as pods that crash.
*/}}
{{- define "serving.validate" -}}
{{- $workers := include "serving.workerNames" . | fromYamlArray }}
{{- if not $workers }}
{{- fail "config.workers: no enabled worker; name at least one model to serve" }}
{{- end }}
{{- range $name, $w := .Values.config.workers }}
{{- range $key := list "replicas" "endpoints" "port" }}
{{- if and $w (hasKey $w $key) }}
{{- if eq $key "replicas" }}
{{- fail (printf "config.workers.%s.replicas: set workers.%s.replicas instead (each replica is a pod of the worker's Deployment)" $name $name) }}
{{- else }}
{{- fail (printf "config.workers.%s.%s: the chart sets it (the worker's Service and port)" $name $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $name := $workers }}
{{- $w := include "serving.workerValues" (list $ $name) | fromYaml }}
{{- $stop := include "serving.workerStop" (list $ $name) | fromYaml }}
{{- if and (gt (int $stop.drain) 0) (le (int $stop.grace) (int $stop.drain)) }}
{{- fail (printf "workers.%s.terminationGracePeriodSeconds: %v, but the pod may drain for %v s (drainSeconds, else config.workers.%s.drain_timeout_s); make it longer, or leave it unset (the drain plus shutdownMarginSeconds)" $name $stop.grace $stop.drain $name) }}
{{- end }}
{{- range $index := dig $name "gpus" list $.Values.config.workers | default list }}
{{- if ge (int $index) (int $w.gpus) }}
{{- fail (printf "config.workers.%s.gpus: GPU %v, but each pod of the worker has %v (workers.%s.gpus), numbered from 0" $name $index $w.gpus $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $name, $_ := .Values.workers }}
{{- if not (hasKey $.Values.config.workers $name) }}
{{- fail (printf "workers.%s: no such worker in config.workers" $name) }}
{{- end }}
{{- end }}
{{- $where := dict "host" "the chart (0.0.0.0)" "port" "the chart (8000)" "database" "database.url or database.dev" "rate_limit_store" "rateLimitStore.url or rateLimitStore.dev" "artifacts" "artifacts.url or artifacts.dev" "artifacts_endpoint" "artifacts.endpoint" "processes" "router.processes" }}
{{- range $key := keys $where | sortAlpha }}
{{- if hasKey (dig "router" dict $.Values.config) $key }}
{{- fail (printf "config.router.%s: set by %s" $key (index $where $key)) }}
{{- end }}
{{- end }}
{{- range $block := list "database" "rateLimitStore" "artifacts" }}
{{- $v := index $.Values $block }}
{{- if and $v.url $v.dev.enabled }}
{{- fail (printf "%s: give `url` (yours) or `dev.enabled` (the chart's), not both" $block) }}
{{- end }}
{{- end }}
{{- $stores := include "serving.stores" . | fromYaml }}
{{- if gt (int .Values.router.processes) 1 }}
{{- if not (and (hasPrefix "postgres" ($stores.database | default "")) (hasPrefix "redis" ($stores.rate_limit_store | default ""))) }}
{{- fail "router.processes: more than one router process needs a PostgreSQL database (database.url or database.dev) and a Redis rateLimitStore (rateLimitStore.url or rateLimitStore.dev)" }}
{{- end }}
{{- end }}
{{- $many := or (gt (int .Values.router.replicas) 1) (and .Values.router.autoscaling.enabled (gt (int .Values.router.autoscaling.maxReplicas) 1)) }}
{{- if and $many (not (include "serving.sharedStores" .)) }}
{{- fail "router: more than one router pod shares its ledger, video jobs, rate limits and videos: set database (PostgreSQL), rateLimitStore (Redis) and artifacts (S3), each as `url` or `dev.enabled`" }}
{{- end }}
{{- $secretEnv := .Values.apiKeys.env | default dict }}
{{- range $i, $k := include "serving.apiKeys" . | fromYamlArray }}
{{- if and $k.env (not $.Values.apiKeys.existingSecret) (not (hasKey $secretEnv $k.env)) }}
{{- fail (printf "config.router.api_keys[%d] (%s): its key comes from $%s; put it in apiKeys.env or apiKeys.existingSecret" $i $k.name $k.env) }}
{{- end }}
{{- end }}
{{- end }}
