{{/* The release's full name: the release name, with "-resurgo" unless it already says so. */}}
{{- define "resurgo.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "resurgo.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "resurgo.labels" -}}
{{ include "resurgo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "resurgo.serviceAccountName" -}}
{{- default (include "resurgo.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "resurgo.leaseName" -}}
{{- default (include "resurgo.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* Fails on values the operator cannot honour. */}}
{{- define "resurgo.validate" -}}
{{- if .Values.watchNamespaces -}}
{{- fail "watchNamespaces is not supported: Resurgo's kinds are cluster-scoped and a RecoveryPlan creates namespaces; use selector to split plans between operators" -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "more than one replica needs leaderElection.enabled: without it every replica would act" -}}
{{- end -}}
{{- end -}}
