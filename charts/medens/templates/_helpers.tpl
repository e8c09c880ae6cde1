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

{{- define "medens.serviceAccountName" -}}
{{- default (include "medens.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "medens.s3SecretName" -}}
{{- if .Values.s3.existingSecret -}}{{ .Values.s3.existingSecret }}{{- else -}}{{ include "medens.fullname" . }}-s3{{- end -}}
{{- end -}}

{{- define "medens.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
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

{{/* Container-level security: read-only root filesystem, no privilege escalation, no capabilities. */}}
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
