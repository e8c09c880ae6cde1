{{/* Every combination of values the schema cannot reject, with the reason. Included by
inferenceservice.yaml, so any render fails early. */}}
{{- define "medens.validate" -}}
{{- $p := .Values.predictor -}}
{{- if lt (int $p.maxReplicas) (int $p.minReplicas) -}}
{{- fail (printf "predictor: maxReplicas (%d) is below minReplicas (%d)" (int $p.maxReplicas) (int $p.minReplicas)) -}}
{{- end -}}
{{- if include "medens.serverless" . -}}
{{- range $field := list "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" -}}
{{- if and (index $p $field) (not (index $.Values.knative.podSpecFlags $field)) -}}
{{- fail (printf "predictor.%s is set but deploymentMode is Serverless: Knative refuses it unless the cluster's config-features enables kubernetes.podspec-%s; enable that flag and set knative.podSpecFlags.%s=true, or use deploymentMode=RawDeployment" $field (lower $field) $field) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $p.grpc.enabled (include "medens.serverless" .) -}}
{{- fail "predictor.grpc.enabled needs deploymentMode=RawDeployment: Knative allows one container port per revision (named http1 or h2c), and it serves REST here; use RawDeployment for gRPC beside REST" -}}
{{- end -}}
{{- if and $p.grpc.enabled (eq (int $p.grpc.port) (int $p.port)) -}}
{{- fail (printf "predictor.grpc.port (%d) must differ from predictor.port" (int $p.grpc.port)) -}}
{{- end -}}
{{- include "medens.validateAutoscaling" . -}}
{{- end -}}

{{/* Autoscaling as KServe 0.15 validates it (pkg/apis/serving/v1beta1/inference_service_validation.go:
validateScalingHPACompExtension allows cpu|memory, validateScalingKedaCompExtension refuses
scaleMetric, validateScalingKPACompExtension allows concurrency|rps). */}}
{{- define "medens.validateAutoscaling" -}}
{{- $a := .Values.predictor.autoscaling -}}
{{- if include "medens.serverless" . -}}
{{- if $a.class -}}
{{- fail (printf "predictor.autoscaling.class=%s applies to deploymentMode=RawDeployment only: in Serverless Knative's autoscaler (KPA) scales the predictor; leave class empty" $a.class) -}}
{{- end -}}
{{- if not (has $a.metric (list "" "concurrency" "rps")) -}}
{{- fail (printf "predictor.autoscaling.metric=%s: in Serverless Knative's KPA scales on concurrency or rps" $a.metric) -}}
{{- end -}}
{{- else -}}
{{- $class := $a.class | default "hpa" -}}
{{- if eq $class "hpa" -}}
{{- if not (has $a.metric (list "" "cpu" "memory")) -}}
{{- fail (printf "predictor.autoscaling.metric=%s: the hpa class scales on cpu or memory" $a.metric) -}}
{{- end -}}
{{- if and (ne $a.metric "memory") $a.target (gt (int $a.target) 100) -}}
{{- fail (printf "predictor.autoscaling.target=%d: a CPU utilisation target is a percent (1-100)" (int $a.target)) -}}
{{- end -}}
{{- else if eq $class "keda" -}}
{{- if or (not (has $a.metric (list "cpu" "memory"))) (not $a.target) -}}
{{- fail "predictor.autoscaling: the keda class needs metric (cpu or memory) and target (utilisation percent)" -}}
{{- end -}}
{{- else if or $a.metric $a.target -}}
{{- fail "predictor.autoscaling: with class external KServe creates no autoscaler; leave metric and target empty" -}}
{{- end -}}
{{- end -}}
{{- end -}}
