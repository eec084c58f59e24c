{{- /* The chart's name, or nameOverride. */ -}}
{{- define "amqp-relay.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- /* Objects are named <fullname>-<part>: fullnameOverride, or the release
name with the chart's name unless the release name holds it. 50 characters
leave room for the longest part and a StatefulSet's pod ordinal. */ -}}
{{- define "amqp-relay.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "amqp-relay.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "amqp-relay.labels" -}}
app.kubernetes.io/name: {{ include "amqp-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "amqp-relay.selector" -}}
app.kubernetes.io/name: {{ include "amqp-relay.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "amqp-relay.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "amqp-relay.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "amqp-relay.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- /* The namespaces the operator watches, as a list. */ -}}
{{- define "amqp-relay.watched" -}}
{{- if .Values.operator.watchNamespaces -}}
{{- toJson .Values.operator.watchNamespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the credentials of `which` (inject or admin). */}}
{{- define "amqp-relay.credentialsSecret" -}}
{{- $cfg := index .root.Values.auth .which -}}
{{- $cfg.existingSecret | default (printf "%s-%s-credentials" (include "amqp-relay.fullname" .root) .which) -}}
{{- end }}

{{- /* SECRET:USERNAME of the credentials the operator creates when missing. */ -}}
{{- define "amqp-relay.ensuredCredentials" -}}
{{- $out := list -}}
{{- range $which := list "inject" "admin" -}}
{{- $cfg := index $.Values.auth $which -}}
{{- if not $cfg.existingSecret -}}
{{- $out = append $out (printf "%s-%s-credentials:%s" (include "amqp-relay.fullname" $) $which $cfg.username) -}}
{{- end -}}
{{- end -}}
{{- join "," $out -}}
{{- end }}

{{- /* Spread a component's pods across nodes, and zones where the nodes have them. */ -}}
{{- define "amqp-relay.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ .root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "amqp-relay.selector" (dict "root" .root "component" .component) | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "amqp-relay.selector" (dict "root" .root "component" .component) | nindent 8 }}
{{- end }}
{{- end }}
