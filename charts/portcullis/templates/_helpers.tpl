{{/*
Shared templates. Helm keeps one template namespace for a chart and its subcharts, so the
subcharts in charts/ use these; they are installed through this umbrella chart only.
Each takes a dict: (dict "ctx" $ "component" "citadel") unless it says otherwise.
*/}}

{{/* The name of a component's objects: <release>-<component>. */}}
{{- define "portcullis.name" -}}
{{- printf "%s-%s" .ctx.Release.Name .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{- define "portcullis.labels" -}}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/part-of: portcullis
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | quote }}
{{- end -}}

{{/* The image of a component: (dict "ctx" $ "image" "citadel"). */}}
{{- define "portcullis.image" -}}
{{- $img := .ctx.Values.global.image -}}
{{- printf "%s/%s:%s" $img.registry .image ($img.tag | default .ctx.Chart.AppVersion) -}}
{{- end -}}

{{/* host:port of a component's Service: (dict "ctx" $ "component" "citadel" "port" 15012). */}}
{{- define "portcullis.addr" -}}
{{- $name := include "portcullis.name" . -}}
{{- if eq .ctx.Values.global.serviceDiscovery "env" -}}
{{- printf "$(%s_SERVICE_HOST):%v" ($name | upper | replace "-" "_") .port -}}
{{- else -}}
{{- printf "%s.%s.svc.%s:%v" $name .ctx.Release.Namespace .ctx.Values.global.clusterDomain .port -}}
{{- end -}}
{{- end -}}

{{/* Pod-level settings every component shares (takes $). */}}
{{- define "portcullis.podSpecCommon" -}}
enableServiceLinks: {{ eq .Values.global.serviceDiscovery "env" }}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The pod security context of a non-root component (takes $). */}}
{{- define "portcullis.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container security context of every component. */}}
{{- define "portcullis.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Pod annotations: metrics scraping (dict "ctx" $ "port" 15014). */}}
{{- define "portcullis.podAnnotations" -}}
{{- if .ctx.Values.global.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* Probes on the admin port (takes the port). */}}
{{- define "portcullis.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: admin}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: admin}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: admin}
  periodSeconds: 5
  failureThreshold: 2
{{- end -}}

{{/* Args every service takes: log level and its control-plane TLS files (takes $). */}}
{{- define "portcullis.commonArgs" -}}
- -log-level={{ .Values.global.logLevel }}
- -tls-cert=/etc/portcullis/tls/tls.crt
- -tls-key=/etc/portcullis/tls/tls.key
- -tls-ca=/etc/portcullis/tls/ca.crt
{{- end -}}

{{/* The Secret holding a service's control-plane certificate (dict "ctx" $ "component" "citadel"). */}}
{{- define "portcullis.tlsSecret" -}}
{{- printf "%s-tls" (include "portcullis.name" .) -}}
{{- end -}}

{{/* Args that make a service follow rotation events on NATS (takes $). */}}
{{- define "portcullis.natsClientArgs" -}}
{{- $nats := .Values.global.nats -}}
{{- if eq $nats.mode "external" }}
- -nats-url={{ $nats.external.url }}
{{- include "portcullis.natsExternalAuthArgs" . }}
{{- else }}
- -nats-url=tls://{{ include "portcullis.addr" (dict "ctx" . "component" "kms-adapter" "port" 4222) }}
{{- end }}
{{- end -}}

{{- define "portcullis.natsExternalAuthArgs" -}}
{{- $ext := .Values.global.nats.external -}}
{{- with $ext.serverID }}
- -nats-server-id={{ . }}
{{- end }}
{{- if $ext.caSecret }}
- -nats-ca-file=/etc/portcullis/nats/ca/ca.crt
{{- end }}
{{- if $ext.user }}
- -nats-user={{ $ext.user }}
- -nats-password-file=/etc/portcullis/nats/password/password
{{- end }}
{{- if $ext.credsSecret }}
- -nats-creds-file=/etc/portcullis/nats/creds/nats.creds
{{- end }}
{{- end -}}

{{/* Volumes and mounts for external NATS credentials (takes $); "mounts" or "volumes". */}}
{{- define "portcullis.natsVolumes" -}}
{{- $ext := .ctx.Values.global.nats.external -}}
{{- if eq .ctx.Values.global.nats.mode "external" }}
{{- range $kind, $secret := dict "ca" $ext.caSecret "password" $ext.passwordSecret "creds" $ext.credsSecret }}
{{- if $secret }}
{{- if eq $.what "mounts" }}
- name: nats-{{ $kind }}
  mountPath: /etc/portcullis/nats/{{ $kind }}
  readOnly: true
{{- else }}
- name: nats-{{ $kind }}
  secret:
    secretName: {{ $secret }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Args that verify workload tokens with the API server's keys (takes $). */}}
{{- define "portcullis.workloadTokenArgs" -}}
- -token-issuer={{ .Values.global.workloadTokens.issuer }}
- -token-audience={{ join "," .Values.global.workloadTokens.audiences }}
- -token-jwks-url=https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)/openid/v1/jwks
- -token-jwks-ca=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt
- -token-jwks-bearer-file=/var/run/secrets/kubernetes.io/serviceaccount/token
{{- end -}}

{{/* A ServiceMonitor for a component (dict "ctx" $ "component" "citadel"). */}}
{{- define "portcullis.serviceMonitor" -}}
{{- if .ctx.Values.global.metrics.serviceMonitor.enabled }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "portcullis.name" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "portcullis.labels" . | nindent 4 }}
spec:
  selector:
    matchLabels:
      {{- include "portcullis.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: admin
      path: /metrics
      interval: {{ .ctx.Values.global.metrics.serviceMonitor.interval }}
{{- end }}
{{- end -}}

{{/*
A NetworkPolicy admitting Portcullis components to a component's gRPC ports and the configured
scrapers to its admin port: (dict "ctx" $ "component" "citadel" "ports" (list 15012) "admin" 15014).
*/}}
{{- define "portcullis.networkPolicy" -}}
{{- if .ctx.Values.global.networkPolicy.enabled }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "portcullis.name" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "portcullis.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "portcullis.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    {{- if .ports }}
    - from:
        - podSelector:
            matchLabels:
              app.kubernetes.io/instance: {{ .ctx.Release.Name }}
              app.kubernetes.io/part-of: portcullis
      ports:
        {{- range .ports }}
        - port: {{ . }}
          protocol: TCP
        {{- end }}
    {{- end }}
    {{- with .extraFrom }}
    - from:
        {{- toYaml . | nindent 8 }}
      ports:
        {{- range $.ports }}
        - port: {{ . }}
          protocol: TCP
        {{- end }}
    {{- end }}
    {{- with .ctx.Values.global.networkPolicy.metricsFrom }}
    - from:
        {{- toYaml . | nindent 8 }}
      ports:
        - port: {{ $.admin }}
          protocol: TCP
    {{- end }}
{{- end }}
{{- end -}}
