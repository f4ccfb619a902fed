{{/*
Object names are fixed and identical to the reference chart, so this chart can replace it in place.
*/}}
{{- define "wi-webhook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wi-webhook.serviceAccountName" -}}azure-wi-webhook-admin{{- end }}
{{- define "wi-webhook.configMapName" -}}azure-wi-webhook-config{{- end }}
{{- define "wi-webhook.policyConfigMapName" -}}azure-wi-webhook-policy{{- end }}
{{- define "wi-webhook.selfManagedSecretName" -}}azure-wi-webhook-server-cert{{- end }}
{{- define "wi-webhook.serviceName" -}}azure-wi-webhook-webhook-service{{- end }}
{{- define "wi-webhook.metricsServiceName" -}}azure-wi-webhook-metrics-service{{- end }}
{{- define "wi-webhook.deploymentName" -}}azure-wi-webhook-controller-manager{{- end }}
{{- define "wi-webhook.webhookConfigName" -}}azure-wi-webhook-mutating-webhook-configuration{{- end }}
{{- define "wi-webhook.validatingConfigName" -}}azure-wi-webhook-validating-webhook-configuration{{- end }}
{{- define "wi-webhook.roleName" -}}azure-wi-webhook-manager-role{{- end }}
{{- define "wi-webhook.roleBindingName" -}}azure-wi-webhook-manager-rolebinding{{- end }}
{{- define "wi-webhook.certificateName" -}}azure-wi-webhook-serving-cert{{- end }}
{{- define "wi-webhook.policyPath" -}}/etc/wi-webhook/policy/policy.yaml{{- end }}

{{/*
The certificate mode, validated (the schema checks it too; this guards `--skip-schema-validation`).
*/}}
{{- define "wi-webhook.certMode" -}}
{{- $mode := .Values.certificates.mode | default "selfManaged" -}}
{{- if not (has $mode (list "selfManaged" "certManager" "existingSecret")) -}}
{{- fail (printf "certificates.mode must be selfManaged, certManager or existingSecret (got %q)" $mode) -}}
{{- end -}}
{{- $mode -}}
{{- end }}

{{/*
Name of the Secret mounted at /certs, by certificate mode.
*/}}
{{- define "wi-webhook.certSecretName" -}}
{{- $mode := include "wi-webhook.certMode" . -}}
{{- if eq $mode "certManager" -}}
{{- include "wi-webhook.certificateName" . -}}
{{- else if eq $mode "existingSecret" -}}
{{- required "certificates.existingSecret.name is required when certificates.mode is existingSecret: the name of a Secret with tls.crt and tls.key in the release namespace" .Values.certificates.existingSecret.name -}}
{{- else -}}
{{- include "wi-webhook.selfManagedSecretName" . -}}
{{- end -}}
{{- end }}

{{/*
Selector labels: exactly the reference chart's, because a Deployment selector cannot change on upgrade.
*/}}
{{- define "wi-webhook.selectorLabels" -}}
app: {{ include "wi-webhook.name" . | quote }}
azure-workload-identity.io/system: "true"
chart: {{ include "wi-webhook.name" . | quote }}
release: {{ .Release.Name | quote }}
{{- end }}

{{/*
Labels of every object: the reference's four plus the recommended app.kubernetes.io/* labels.
*/}}
{{- define "wi-webhook.labels" -}}
{{ include "wi-webhook.selectorLabels" . }}
app.kubernetes.io/name: {{ include "wi-webhook.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/part-of: azure-workload-identity
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
{{- end }}

{{/*
The manager image: repository:tag (tag, else the reference's image.release, else appVersion), or @digest.
*/}}
{{- define "wi-webhook.image" -}}
{{- $tag := .Values.image.tag | default .Values.image.release | default .Chart.AppVersion | toString -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end }}

{{/*
The metrics port, from metricsAddr (":8095", "0.0.0.0:8095", "[::]:8095").
*/}}
{{- define "wi-webhook.metricsPort" -}}
{{- $port := splitList ":" (toString .Values.metricsAddr) | last -}}
{{- if not (regexMatch "^[0-9]+$" $port) -}}
{{- fail (printf "metricsAddr must end with :<port> (got %q)" .Values.metricsAddr) -}}
{{- end -}}
{{- $port -}}
{{- end }}

{{/*
The container's memory limit in MiB (whole), or -1 when none is set. Kubernetes quantities: plain bytes, k/M/G/T
and Ki/Mi/Gi/Ti suffixes. Used to refuse a limit below the measured idle figure (README "Memory").
*/}}
{{- define "wi-webhook.memoryLimitMi" -}}
{{- $limit := "" -}}
{{- with .Values.resources }}{{ with .limits }}{{ with .memory -}}
{{- $limit = kindIs "float64" . | ternary (printf "%.0f" .) (toString .) -}}
{{- end }}{{ end }}{{ end -}}
{{- if not $limit -}}
-1
{{- else -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $limit -}}
{{- $unit := trimPrefix $number $limit -}}
{{- $factors := dict "" 1.0 "k" 1000.0 "Ki" 1024.0 "M" 1000000.0 "Mi" 1048576.0 "G" 1000000000.0 "Gi" 1073741824.0 "T" 1000000000000.0 "Ti" 1099511627776.0 -}}
{{- if or (not $number) (not (hasKey $factors $unit)) -}}
{{- fail (printf "resources.limits.memory %q is not a Kubernetes memory quantity; use e.g. 256Mi" $limit) -}}
{{- end -}}
{{- divf (mulf (float64 $number) (get $factors $unit)) 1048576.0 | floor | int -}}
{{- end -}}
{{- end }}

{{/* The measured idle footprint (cluster mode, no ServiceAccounts) plus a little; a limit below it OOM-kills the
webhook at start, and with failurePolicy Fail that blocks every labelled pod. */}}
{{- define "wi-webhook.minMemoryMi" -}}112{{- end }}
{{/* The default limit: the measured worst case at the documented scale, with headroom (README "Memory"). */}}
{{- define "wi-webhook.recommendedMemoryMi" -}}256{{- end }}

{{- define "wi-webhook.checkMemory" -}}
{{- $limit := include "wi-webhook.memoryLimitMi" . | int -}}
{{- $min := include "wi-webhook.minMemoryMi" . | int -}}
{{- if and (ge $limit 0) (lt $limit $min) -}}
{{- fail (printf "resources.limits.memory %v is below the webhook's measured idle memory (about 95 MB in a cluster): it would be OOM-killed and, with failurePolicy Fail, block every labelled pod. Set at least %dMi; the default %dMi holds 100k ServiceAccounts and 8 concurrent 3 MiB pods (chart README, Memory). A values file from the reference chart sets 30Mi: drop that setting." .Values.resources.limits.memory $min (include "wi-webhook.recommendedMemoryMi" . | int)) -}}
{{- end -}}
{{- end }}

{{/*
--shutdown-delay and the pod's grace period. Empty values take defaults that depend on hostNetwork: there the delay
is the longest a terminating pod waits for its successor on the node to answer /readyz before it stops serving
(`serve --reuse-port`, chart README "hostNetwork"). 30 s covers a successor's start on a slow node (image present:
the container starts, loads its certificates and lists the ServiceAccounts; a few seconds on the test node). In an
upgrade the wait ends as soon as the new pod is ready, which it already is when the Deployment stops the old one
(maxSurge 1): the full delay is only spent when no successor comes (uninstall, scale to 0, drain to another node).
*/}}
{{- define "wi-webhook.shutdownDelay" -}}
{{- if kindIs "invalid" .Values.shutdownDelaySeconds -}}{{ ternary 30 5 (.Values.hostNetwork | default false) }}{{- else -}}{{ .Values.shutdownDelaySeconds }}{{- end -}}
{{- end }}

{{/* The delay, then the hand-off drain (2 s) and --shutdown-timeout (25 s) for in-flight reviews, plus 3 s. */}}
{{- define "wi-webhook.terminationGracePeriod" -}}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) -}}{{ .Values.terminationGracePeriodSeconds }}
{{- else if .Values.hostNetwork -}}{{ add (include "wi-webhook.shutdownDelay" . | float64 | ceil | int) 30 }}
{{- else -}}35{{- end -}}
{{- end }}

{{/*
hostNetwork hands the node's ports from the old pod to the new one (`serve --reuse-port`): refuse what breaks that.
*/}}
{{- define "wi-webhook.checkHostNetwork" -}}
{{- if .Values.hostNetwork -}}
{{- if gt (int .Values.workers) 1 -}}
{{- fail (printf "hostNetwork: true needs workers: 1 (got %v): the webhook hands its node ports to the next pod with serve --reuse-port, which a single process does; run more replicas on more nodes instead" .Values.workers) -}}
{{- end -}}
{{- $delay := include "wi-webhook.shutdownDelay" . | float64 -}}
{{- $grace := include "wi-webhook.terminationGracePeriod" . | float64 -}}
{{- if lt $grace (addf $delay 27) -}}
{{- fail (printf "terminationGracePeriodSeconds %v is too short for hostNetwork: a terminating pod waits up to shutdownDelaySeconds (%v) for its successor, then up to 27 s to finish in-flight reviews; set it to at least %v, or leave it empty" $grace $delay (addf $delay 27 | ceil)) -}}
{{- end -}}
{{- end -}}
{{- end }}
