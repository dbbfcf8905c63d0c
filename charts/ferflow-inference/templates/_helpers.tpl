{{/* Chart name, truncated to the 63-character DNS label limit. */}}
{{- define "ferflow-inference.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release already contains it. */}}
{{- define "ferflow-inference.fullname" -}}
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

{{- define "ferflow-inference.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (a Deployment selector is immutable). */}}
{{- define "ferflow-inference.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferflow-inference.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ferflow-inference.labels" -}}
helm.sh/chart: {{ include "ferflow-inference.chart" . }}
{{ include "ferflow-inference.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferflow
{{- end }}

{{- define "ferflow-inference.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferflow-inference.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference: repository@digest when a digest is set, else repository:tag. */}}
{{- define "ferflow-inference.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True ("true") when an MLflow tracking URI source is configured. */}}
{{- define "ferflow-inference.hasTrackingUri" -}}
{{- $t := .Values.mlflow.trackingUri }}
{{- if and $t.secretName $t.configMapName }}
{{- fail "mlflow.trackingUri: set either secretName or configMapName, not both" }}
{{- end }}
{{- if or $t.secretName $t.configMapName }}true{{ end }}
{{- end }}

{{/*
The model URI the server loads (FERFLOW_MODEL_URI), or "" to keep the image's
reference model: an explicit model.uri wins; with a tracking URI, the registered
name at the pinned version or else at the alias.
*/}}
{{- define "ferflow-inference.modelUri" -}}
{{- $m := .Values.model }}
{{- if $m.uri }}
{{- $m.uri }}
{{- else if include "ferflow-inference.hasTrackingUri" . }}
{{- if $m.version }}
{{- printf "models:/%s/%s" $m.registeredName (toString $m.version) }}
{{- else }}
{{- printf "models:/%s@%s" $m.registeredName $m.alias }}
{{- end }}
{{- end }}
{{- end }}

{{/* Settings for a non-root, read-only container; shared by the server and the CronJob. */}}
{{- define "ferflow-inference.tmpEnv" -}}
- name: HOME
  value: /tmp
- name: BENTOML_HOME
  value: /tmp/bentoml
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- end }}

{{/*
Labels of the `helm test` pod. Its app.kubernetes.io/name differs from the server's, so the
Deployment's selector (also the HPA's and PDB's) and the Service's never match it.
*/}}
{{- define "ferflow-inference.testPodSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ferflow-inference.name" . | trunc 58 | trimSuffix "-" }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end }}

{{- define "ferflow-inference.testPodLabels" -}}
helm.sh/chart: {{ include "ferflow-inference.chart" . }}
{{ include "ferflow-inference.testPodSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferflow
{{- end }}

{{/*
Labels of the retrain CronJob's pods: another app.kubernetes.io/name, so that the Deployment's
selector (and the HPA's CPU average, the PDB, the Service) never count them as servers.
*/}}
{{- define "ferflow-inference.retrainPodLabels" -}}
helm.sh/chart: {{ include "ferflow-inference.chart" . }}
app.kubernetes.io/name: {{ include "ferflow-inference.name" . | trunc 55 | trimSuffix "-" }}-retrain
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferflow
app.kubernetes.io/component: retrain-trigger
{{- end }}
