{{/* The chart's name, or nameOverride: the app.kubernetes.io/name label. */}}
{{- define "mlops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: fullnameOverride, else <release>-<name> (just <release>
when it already contains the name). 63 characters at most: names are also label values. */}}
{{- define "mlops.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<suffix>", the fullname shortened so that the whole stays within 63 characters:
include "mlops.suffixed" (dict "root" . "suffix" "queues"). */}}
{{- define "mlops.suffixed" -}}
{{- printf "%s-%s" (include "mlops.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix -}}
{{- end -}}

{{- define "mlops.labels" -}}
app.kubernetes.io/name: {{ include "mlops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The operator pods. The Deployment's selector: never change it (it is immutable, an upgrade
would fail), and never give another pod of the release both labels (its ReplicaSet would adopt it). */}}
{{- define "mlops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The `helm test` objects: a name label of their own, so the operator's selector never matches them. */}}
{{- define "mlops.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mlops.name" . | trunc 58 | trimSuffix "-" }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mlops.testLabels" -}}
{{ include "mlops.testSelectorLabels" . }}
app.kubernetes.io/component: helm-test
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "mlops.serviceAccountName" -}}
{{- default (include "mlops.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "mlops.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ default .Chart.AppVersion .Values.operator.image.tag }}
{{- end -}}

{{/* Namespaces that get trainer ServiceAccounts and queue ConfigMaps. */}}
{{- define "mlops.runNamespaces" -}}
{{- if .Values.operator.watchNamespaces -}}{{ join "," .Values.operator.watchNamespaces }}{{- else -}}{{ .Release.Namespace }}{{- end -}}
{{- end -}}

{{/* Where runs live first: the first watched namespace, else the release's (NOTES, helm test). */}}
{{- define "mlops.firstRunNamespace" -}}
{{- if .Values.operator.watchNamespaces -}}{{ first .Values.operator.watchNamespaces }}{{- else -}}{{ .Release.Namespace }}{{- end -}}
{{- end -}}

{{/* The test run's namespace: tests.namespace, else the first namespace runs live in. */}}
{{- define "mlops.testNamespace" -}}
{{- default (include "mlops.firstRunNamespace" .) .Values.tests.namespace -}}
{{- end -}}

{{/* Egress every API client of the release needs: DNS, and the API server (the `kubernetes`
Service's endpoints: NetworkPolicies see the address after the Service is resolved, so it is the
API server's own port, 443 on GKE/EKS/AKS, 6443 on kubeadm/kind/k3s). */}}
{{- define "mlops.egressDnsAndApiServer" -}}
- ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
- ports:
    {{- range .Values.networkPolicy.apiServer.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- with .Values.networkPolicy.apiServer.cidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  {{- end }}
{{- end -}}
