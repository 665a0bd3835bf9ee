{{/*
The sidecar library: add Envoy and authz-sidecar to any workload's pod template. In a chart that lists this one
as a dependency (with app.enabled: false), each template takes this chart's scope, not yours:

  {{- $authz := index .Subcharts "authz-sidecar" }}
  spec:
    template:
      metadata:
        labels: {{- include "authz-sidecar.selectorLabels" $authz | nindent 10 }}   # and your own
        annotations: {{- include "authz-sidecar.podAnnotations" $authz | nindent 10 }}
      spec:
        {{- include "authz-sidecar.podSecurity" $authz | nindent 8 }}
        terminationGracePeriodSeconds: {{ include "authz-sidecar.terminationGracePeriod" $authz }}
        initContainers: {{- include "authz-sidecar.sidecars" $authz | nindent 10 }}   # nativeSidecars: true
        containers: [your app, listening on 127.0.0.1:ports.app]
        volumes: {{- include "authz-sidecar.volumes" $authz | nindent 10 }}

With nativeSidecars: false the two go into `containers` beside the app instead. The ConfigMap and Secret they
mount come from this chart (configmap.yaml, secret.yaml). deploy/helm/examples/my-app is that chart, worked out
and tested; templates/deployment.yaml here is the chart's own example (with `.` as the scope).
*/}}

{{- define "authz-sidecar.containerSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "authz-sidecar.podSecurity" -}}
automountServiceAccountToken: false
serviceAccountName: {{ include "authz-sidecar.fullname" . }}
securityContext:
  runAsNonRoot: true
  # The Secret's files (mode 0440) are readable by this group, which authz-sidecar's user is in.
  fsGroup: 10001
  seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "authz-sidecar.podAnnotations" -}}
{{ include "authz-sidecar.checksums" . }}
{{- include "authz-sidecar.metricsAnnotations" . }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* authz-sidecar itself. Readiness: /readyz (config and keys loaded, not draining) in sidecar mode, where
ext_authz listens on loopback only; the ext_authz port's grpc.health.v1 in standalone mode. */}}
{{- define "authz-sidecar.container" -}}
- name: authz-sidecar
  image: {{ include "authz-sidecar.image" .Values.image }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if and .Values.nativeSidecars (ne .Values.mode "standalone") }}
  restartPolicy: Always
  {{- end }}
  command: ["authz-sidecar"]
  args: ["serve", "--config", "/etc/authz-sidecar/config.yaml"]
  ports:
  - {name: authz-admin, containerPort: {{ .Values.ports.admin }}, protocol: TCP}
  {{- if eq .Values.mode "standalone" }}
  - {name: grpc, containerPort: {{ .Values.ports.grpc }}, protocol: TCP}
  {{- end }}
  env:
  - {name: PYTHONDONTWRITEBYTECODE, value: "1"}
  startupProbe:
    httpGet: {path: /readyz, port: authz-admin}
    periodSeconds: 1
    timeoutSeconds: 1
    failureThreshold: {{ .Values.probes.startupSeconds }}
  readinessProbe:
    {{- if eq .Values.mode "standalone" }}
    grpc: {port: {{ .Values.ports.grpc }}}
    {{- else }}
    httpGet: {path: /readyz, port: authz-admin}
    {{- end }}
    periodSeconds: 5
    timeoutSeconds: 1
    failureThreshold: 2
  livenessProbe:
    httpGet: {path: /healthz, port: authz-admin}
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  {{- if eq .Values.mode "standalone" }}
  lifecycle:
    preStop:
      sleep: {seconds: {{ .Values.preStopSleepSeconds }}}
  {{- end }}
  resources: {{- toYaml .Values.resources | nindent 4 }}
  securityContext: {{- include "authz-sidecar.containerSecurity" (dict "uid" 10001) | nindent 4 }}
  volumeMounts:
  - {name: authz-config, mountPath: /etc/authz-sidecar/config.yaml, subPath: config.yaml, readOnly: true}
  - {name: authz-secret, mountPath: /etc/authz-sidecar/secrets, readOnly: true}
  - {name: authz-tmp, mountPath: /tmp}
{{- end -}}

{{/* Envoy, the pod's door: its bootstrap is deploy/envoy/'s template for these ports (files/, generated). */}}
{{- define "authz-sidecar.envoyContainer" -}}
- name: envoy
  image: {{ include "authz-sidecar.image" .Values.envoy.image }}
  imagePullPolicy: {{ .Values.envoy.image.pullPolicy }}
  {{- if .Values.nativeSidecars }}
  restartPolicy: Always
  {{- end }}
  command: ["envoy"]
  args: ["-c", "/etc/envoy/envoy.yaml", "--concurrency", {{ .Values.envoy.concurrency | quote }}, "--disable-hot-restart", "--log-level", {{ .Values.envoy.logLevel | quote }}]
  ports:
  - {name: http, containerPort: {{ .Values.ports.envoy }}, protocol: TCP}
  env:
  - {name: ENVOY_DISABLE_TELEMETRY, value: "1"}
  startupProbe:
    tcpSocket: {port: http}
    periodSeconds: 1
    timeoutSeconds: 1
    failureThreshold: 30
  readinessProbe:
    tcpSocket: {port: http}
    periodSeconds: 5
    timeoutSeconds: 1
  livenessProbe:
    tcpSocket: {port: http}
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  resources: {{- toYaml .Values.envoy.resources | nindent 4 }}
  securityContext: {{- include "authz-sidecar.containerSecurity" (dict "uid" 10101) | nindent 4 }}
  volumeMounts:
  - {name: authz-config, mountPath: /etc/envoy/envoy.yaml, subPath: envoy.yaml, readOnly: true}
{{- end -}}

{{/* The two sidecars in start order: authz-sidecar, then Envoy (which asks it). */}}
{{- define "authz-sidecar.sidecars" -}}
{{ include "authz-sidecar.container" . }}
{{ include "authz-sidecar.envoyContainer" . }}
{{- end -}}

{{- define "authz-sidecar.volumes" -}}
- name: authz-config
  configMap: {name: {{ include "authz-sidecar.fullname" . }}-config}
- name: authz-secret
  secret: {secretName: {{ include "authz-sidecar.secretName" . }}, defaultMode: 0440}
- name: authz-tmp
  emptyDir: {sizeLimit: 16Mi}
{{- end -}}
