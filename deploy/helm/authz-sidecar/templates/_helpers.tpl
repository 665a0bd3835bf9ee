{{/* Names and labels. */}}
{{- define "authz-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "authz-sidecar.fullname" -}}
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

{{- define "authz-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "authz-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "authz-sidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "authz-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* An image reference: repository:tag, or repository@digest when a digest pins it. */}}
{{- define "authz-sidecar.image" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{- define "authz-sidecar.standalone" -}}
{{- if eq .Values.mode "standalone" }}true{{ end -}}
{{- end -}}

{{/* Where authz-sidecar listens: ext_authz on loopback next to Envoy (sidecar mode) or on the pod IP for the mesh
(standalone); admin on the pod IP for the kubelet's probes and Prometheus. */}}
{{- define "authz-sidecar.listen" -}}
{{- $host := ternary "0.0.0.0" "127.0.0.1" (eq .Values.mode "standalone") -}}
{{- $listen := dict "admin" (printf "0.0.0.0:%v" .Values.ports.admin) -}}
{{- if or (eq .Values.authz "grpc") (eq .Values.mode "standalone") -}}
{{- $_ := set $listen "grpc" (printf "%s:%v" $host .Values.ports.grpc) -}}
{{- else -}}
{{- $_ := set $listen "grpc" nil -}}
{{- $_ := set $listen "http" (printf "127.0.0.1:%v" .Values.ports.http) -}}
{{- end -}}
{{- toYaml $listen -}}
{{- end -}}

{{/* The sidecar config file: .Values.config with the chart's listen, HTTP mode's path prefix and Redis. */}}
{{- define "authz-sidecar.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "listen" (include "authz-sidecar.listen" . | fromYaml) -}}
{{- if and (eq .Values.authz "http") (ne .Values.mode "standalone") -}}
{{- $http := default dict (get $config "http") -}}
{{- $_ := set $http "path_prefix" "/authz" -}}
{{- $_ := set $config "http" $http -}}
{{- end -}}
{{- if .Values.redis.url -}}
{{- $cache := default dict (get $config "cache") -}}
{{- $redis := dict "url" .Values.redis.url "timeout_ms" .Values.redis.timeoutMs "signing_key_file" "/etc/authz-sidecar/secrets/signing-key" -}}
{{- $_ := set $cache "redis" $redis -}}
{{- $_ := set $config "cache" $cache -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Seconds the pod gets to stop, as the kubelet spends them with native sidecars: the app's preStop sleep and
shutdown, then Envoy's shutdown, then authz-sidecar's server.grace_period, and 2 s to spare. */}}
{{- define "authz-sidecar.terminationGracePeriod" -}}
{{- $grace := int (default 10 (dig "server" "grace_period" 10 .Values.config)) -}}
{{- if eq .Values.mode "standalone" -}}
{{- add .Values.preStopSleepSeconds $grace 2 -}}
{{- else -}}
{{- add .Values.preStopSleepSeconds .Values.app.shutdownSeconds .Values.envoy.shutdownSeconds $grace 2 -}}
{{- end -}}
{{- end -}}

{{- define "authz-sidecar.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}

{{- define "authz-sidecar.metricsAnnotations" -}}
{{- if .Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.admin | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{- define "authz-sidecar.secretName" -}}
{{- default (printf "%s-secret" (include "authz-sidecar.fullname" .)) .Values.secret.existingSecret -}}
{{- end -}}

{{/* ConfigMap keys cannot hold "/": a file's key is its path with "/" as "__". */}}
{{- define "authz-sidecar.fileKey" -}}
{{- . | replace "/" "__" -}}
{{- end -}}

{{/* Envoy's bootstrap: files/envoy-<authz>.yaml (generated from deploy/envoy/'s template) with the pod's ports. */}}
{{- define "authz-sidecar.envoyBootstrap" -}}
{{- $text := .Files.Get (printf "files/envoy-%s.yaml" .Values.authz) -}}
{{- range $name, $port := .Values.ports -}}
{{- $text = replace (printf "@ports.%s@" $name) (toString $port) $text -}}
{{- end -}}
{{- $text -}}
{{- end -}}

{{/* checkov's findings this chart leaves to you, each with why (checkov reads these annotations). */}}
{{- define "authz-sidecar.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_15=pullPolicy IfNotPresent by default; pin images by digest (image.digest) and the node's copy is the same image
{{- $images := list .Values.image -}}
{{- if ne .Values.mode "standalone" }}{{ $images = concat $images (list .Values.envoy.image .Values.app.image) }}{{ end -}}
{{- $undigested := list -}}
{{- range $images }}{{ if not .digest }}{{ $undigested = append $undigested .repository }}{{ end }}{{ end -}}
{{- if $undigested }}
checkov.io/skip2: CKV_K8S_43=no digest given for {{ join ", " $undigested }}; set image.digest, envoy.image.digest and app.image.digest in production
{{- end }}
{{- end -}}
