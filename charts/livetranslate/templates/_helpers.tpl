{{/* Chart name, overridable. */}}
{{- define "livetranslate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, suffixed with the chart name unless it already contains it. */}}
{{- define "livetranslate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "livetranslate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object, without the component. */}}
{{- define "livetranslate.commonLabels" -}}
helm.sh/chart: {{ include "livetranslate.chart" . }}
app.kubernetes.io/name: {{ include "livetranslate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: livetranslate
{{- end -}}

{{/* Labels of the operator's own objects. */}}
{{- define "livetranslate.labels" -}}
{{ include "livetranslate.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels selecting the operator pods; never change them (Deployment selectors are immutable). */}}
{{- define "livetranslate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "livetranslate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "livetranslate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "livetranslate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "livetranslate.peeringName" -}}
{{- default (include "livetranslate.fullname" .) .Values.operator.peering.name -}}
{{- end -}}

{{/*
A LiveTranslate image reference. Call with (dict "root" $ "image" .Values.workloads.audio).
*/}}
{{- define "livetranslate.image" -}}
{{- $root := .root -}}
{{- $tag := default (default $root.Chart.AppVersion $root.Values.image.tag) .image.tag -}}
{{- if $root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "livetranslate.vllmImage" -}}
{{- $v := .Values.workloads.vllm -}}
{{- if and $v.useRegistry .Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .Values.image.registry) $v.repository $v.tag -}}
{{- else -}}
{{- printf "%s:%s" $v.repository $v.tag -}}
{{- end -}}
{{- end -}}

{{/* Dashboard ConfigMaps' namespace. */}}
{{- define "livetranslate.dashboardNamespace" -}}
{{- default .Release.Namespace .Values.dashboards.namespace -}}
{{- end -}}
