{{- define "mlops.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "mlops.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mlops.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mlops.serviceAccountName" -}}
{{- default (include "mlops.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Namespaces that get trainer ServiceAccounts and queue ConfigMaps. */}}
{{- define "mlops.runNamespaces" -}}
{{- if .Values.operator.watchNamespaces -}}{{ join "," .Values.operator.watchNamespaces }}{{- else -}}{{ .Release.Namespace }}{{- end -}}
{{- end -}}

