{{- define "medens.fullname" -}}
{{- printf "%s-medens" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "medens.labels" -}}
app.kubernetes.io/name: medens
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: medens
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The label KServe puts on every pod of the InferenceService (both modes). */}}
{{- define "medens.podSelector" -}}
serving.kserve.io/inferenceservice: {{ .Values.model.name }}
{{- end -}}

{{- define "medens.serviceAccountName" -}}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
{{- fail "serviceAccount: create is false, so name must name an existing ServiceAccount" -}}
{{- end -}}
{{- default (include "medens.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "medens.s3SecretName" -}}
{{- if .Values.s3.existingSecret -}}{{ .Values.s3.existingSecret }}{{- else -}}{{ include "medens.fullname" . }}-s3{{- end -}}
{{- end -}}

{{/* The port of s3.endpoint (host:port), else the scheme's default. */}}
{{- define "medens.s3Port" -}}
{{- $parts := splitList ":" .Values.s3.endpoint -}}
{{- if gt (len $parts) 1 -}}{{ last $parts }}{{- else -}}{{ ternary 443 80 .Values.s3.useHttps }}{{- end -}}
{{- end -}}

{{/* Image of every medens container, from the root context: repository@digest when a digest is
given, else repository:tag plus gpuTagSuffix when the predictor uses GPUs (the Dockerfile's
VARIANT=cuda build). */}}
{{- define "medens.image" -}}
{{- $i := .Values.image -}}
{{- if $i.digest -}}
{{ $i.repository }}@{{ $i.digest }}
{{- else if gt (int .Values.predictor.gpu) 0 -}}
{{ $i.repository }}:{{ $i.tag }}{{ $i.gpuTagSuffix }}
{{- else -}}
{{ $i.repository }}:{{ $i.tag }}
{{- end -}}
{{- end -}}

{{- define "medens.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* True ("true") when the predictor is a Knative Service. */}}
{{- define "medens.serverless" -}}
{{- if eq .Values.deploymentMode "Serverless" -}}true{{- end -}}
{{- end -}}

{{/* Whether a pod-level field may be set: always in RawDeployment; in Serverless only with the
Knative flag kubernetes.podspec-<field> on, because Knative's PodSpecMask
(knative/serving pkg/apis/serving/fieldmask.go) drops the field otherwise and its defaults
(pkg/apis/config/features.go) have every such flag Disabled. Call with (list $ "flagName"). */}}
{{- define "medens.podFieldAllowed" -}}
{{- $root := index . 0 -}}
{{- if or (not (include "medens.serverless" $root)) (index $root.Values.knative.podSpecFlags (index . 1)) -}}true{{- end -}}
{{- end -}}

{{/* `medens serve --threads`: whole cores of the CPU limit ("2" -> 2, "1500m" -> 1, "4000m" -> 4),
at least 1; empty without a CPU limit. */}}
{{- define "medens.threads" -}}
{{- $cpu := (.Values.predictor.resources.limits | default dict).cpu -}}
{{- if $cpu -}}
{{- $s := toString $cpu -}}
{{- $cores := 0 -}}
{{- if hasSuffix "m" $s -}}
{{- $cores = div (int64 (trimSuffix "m" $s)) 1000 -}}
{{- else -}}
{{- $cores = floor (float64 $s) | int64 -}}
{{- end -}}
{{- max 1 $cores -}}
{{- end -}}
{{- end -}}

{{/* Pod-level security: non-root, fixed UID/GID, RuntimeDefault seccomp. */}}
{{- define "medens.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security: read-only root filesystem, no privilege escalation, no capabilities.
Every field here is one Knative's SecurityContextMask (pkg/apis/serving/fieldmask.go) keeps
(privileged only as false), so it is the same in both modes and satisfies Pod Security
"restricted" on its own. */}}
{{- define "medens.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "medens.testPodLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end -}}

{{/* An alert's annotations; call with (list $ "AlertName" "summary" "description"). */}}
{{- define "medens.alertAnnotations" -}}
{{- $root := index . 0 -}}
summary: {{ index . 2 | quote }}
description: {{ index . 3 | quote }}
runbook_url: {{ printf "%s#alert-%s" $root.Values.monitoring.rules.runbookBaseUrl (lower (index . 1)) | quote }}
{{- end -}}
