{{/* Names: <release>-<service>, or <service> names alone when the release is called learntrail */}}
{{- define "learntrail.fullname" -}}
{{- if contains "learntrail" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-learntrail" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "learntrail.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: learntrail
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "learntrail.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The optional NATS credentials, from the Secret */}}
{{- define "learntrail.natsEnv" -}}
{{- range $env, $key := dict "NATS_USER" "nats-user" "NATS_PASSWORD" "nats-password" "NATS_TOKEN" "nats-token" }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef: {name: {{ $.Values.secrets.name }}, key: {{ $key }}, optional: true}
{{- end }}
{{- end -}}

{{/*
One Learntrail service: ServiceAccount, Deployment or StatefulSet, Service, and (as its values
ask) HorizontalPodAutoscaler, PodDisruptionBudget, NetworkPolicy. Called by each service's
template with dict "root" $ "def" (dict ...):
  name        service name (also its binary unless "binary" is given)
  kind        Deployment | StatefulSet
  values      its values block (enabled, replicas, env, resources, autoscaling, pdb, ...)
  ports       list of dict name, port, servicePort, env (the *_ADDR setting that binds it), public
  metricsPort the port of /healthz, /readyz, /metrics
  secretEnv   list of dict env, key, optional: settings taken from the Secret
  env         dict of fixed settings
  natsClient, redisClient  whether it talks to NATS / Redis
  egressPorts extra TCP ports it may reach anywhere (S3)
  egressTo    list of dict service, port: another Learntrail service's pods it may reach
  configKeys  only these keys of the shared ConfigMap (configMapKeyRef), instead of all of it
  volumePath  StatefulSet only: where its persistent volume is mounted
  volumes, volumeMounts  more volumes of the pod and mounts of the container
  podAnnotations  more annotations of the pod template (checksums of its own ConfigMaps)
  podSecurityContext  merged over .Values.podSecurityContext for this service's pods
  headless    its Service has no cluster IP (only metrics behind it)
  parallel    StatefulSet pods start and stop in parallel
  podNameEnv  POD_NAME from the pod's name (a StatefulSet's ordinal)
*/}}
{{- define "learntrail.service" -}}
{{- $root := .root -}}
{{- $def := .def -}}
{{- $v := $def.values -}}
{{- $full := printf "%s-%s" (include "learntrail.fullname" $root) $def.name -}}
{{- $selector := dict "app.kubernetes.io/name" $def.name "app.kubernetes.io/instance" $root.Release.Name -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $full }}
  labels:
    {{- include "learntrail.labels" $root | nindent 4 }}
    app.kubernetes.io/name: {{ $def.name }}
  {{- with $v.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
---
apiVersion: apps/v1
kind: {{ $def.kind }}
metadata:
  name: {{ $full }}
  labels:
    {{- include "learntrail.labels" $root | nindent 4 }}
    app.kubernetes.io/name: {{ $def.name }}
spec:
  {{- if eq $def.kind "StatefulSet" }}
  serviceName: {{ $full }}
  {{- end }}
  {{- if $def.parallel }}
  podManagementPolicy: Parallel
  {{- end }}
  {{- if not (and (eq $def.kind "Deployment") $v.autoscaling $v.autoscaling.enabled) }}
  replicas: {{ $v.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- toYaml $selector | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "learntrail.labels" $root | nindent 8 }}
        app.kubernetes.io/name: {{ $def.name }}
        {{- if $def.natsClient }}
        learntrail.io/nats-client: "true"
        {{- end }}
        {{- if $def.redisClient }}
        learntrail.io/redis-client: "true"
        {{- end }}
        learntrail.io/metrics: "true"
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/config.yaml") $root | sha256sum }}
        {{- range $name, $value := $def.podAnnotations }}
        {{ $name }}: {{ $value | quote }}
        {{- end }}
    spec:
      serviceAccountName: {{ $full }}
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml (mergeOverwrite (deepCopy $root.Values.podSecurityContext) ($def.podSecurityContext | default dict)) | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if eq $def.kind "Deployment" }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- toYaml $selector | nindent 14 }}
      {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $def.name }}
          image: {{ include "learntrail.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ $def.binary | default $def.name | quote }}]
          ports:
            {{- range $def.ports }}
            - {name: {{ .name }}, containerPort: {{ .port }}}
            {{- end }}
            - {name: metrics, containerPort: {{ $def.metricsPort }}}
          {{- if not $def.configKeys }}
          envFrom:
            - configMapRef: {name: {{ include "learntrail.fullname" $root }}-config}
          {{- end }}
          env:
            {{- range $def.configKeys }}
            - name: {{ . }}
              valueFrom:
                configMapKeyRef: {name: {{ include "learntrail.fullname" $root }}-config, key: {{ . }}}
            {{- end }}
            {{- range $def.ports }}
            - {name: {{ .env }}, value: {{ printf "0.0.0.0:%v" .port | quote }}}
            {{- end }}
            - {name: METRICS_ADDR, value: {{ printf "0.0.0.0:%v" $def.metricsPort | quote }}}
            {{- range $name, $value := $def.env }}
            - {name: {{ $name }}, value: {{ include "learntrail.envValue" $value }}}
            {{- end }}
            {{- range $name, $value := $v.env }}
            - {name: {{ $name }}, value: {{ include "learntrail.envValue" $value }}}
            {{- end }}
            {{- if $def.podNameEnv }}
            - name: POD_NAME
              valueFrom:
                fieldRef: {fieldPath: metadata.name}
            {{- end }}
            {{- range $def.secretEnv }}
            {{- /* a setting given in the service's env wins: one entry per name */}}
            {{- if not (hasKey ($v.env | default dict) .env) }}
            - name: {{ .env }}
              valueFrom:
                secretKeyRef: {name: {{ $root.Values.secrets.name }}, key: {{ .key }}{{ if .optional }}, optional: true{{ end }}}
            {{- end }}
            {{- end }}
            {{- if $def.natsClient }}
            {{- include "learntrail.natsEnv" $root | nindent 12 }}
            {{- end }}
          {{- if or $def.volumePath $def.volumeMounts }}
          volumeMounts:
            {{- if $def.volumePath }}
            - {name: data, mountPath: {{ $def.volumePath }}}
            {{- end }}
            {{- with $def.volumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          readinessProbe:
            httpGet: {path: /readyz, port: metrics}
            periodSeconds: 5
          livenessProbe:
            httpGet: {path: /healthz, port: metrics}
            periodSeconds: 10
            failureThreshold: 3
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
      {{- with $def.volumes }}
      volumes:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  {{- if $def.volumePath }}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        {{- with $v.persistence.storageClass }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests: {storage: {{ $v.persistence.size }}}
  {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $full }}
  labels:
    {{- include "learntrail.labels" $root | nindent 4 }}
    app.kubernetes.io/name: {{ $def.name }}
    learntrail.io/metrics: "true"
spec:
  {{- if $def.headless }}
  clusterIP: None
  {{- else if $v.service }}
  type: {{ $v.service.type }}
  {{- end }}
  selector:
    {{- toYaml $selector | nindent 4 }}
  ports:
    {{- range $def.ports }}
    - {name: {{ .name }}, port: {{ .servicePort | default .port }}, targetPort: {{ .name }}}
    {{- end }}
    - {name: metrics, port: {{ $def.metricsPort }}, targetPort: metrics}
{{- if and (eq $def.kind "Deployment") $v.autoscaling $v.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $full }}
  labels:
    {{- include "learntrail.labels" $root | nindent 4 }}
    app.kubernetes.io/name: {{ $def.name }}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: {{ $full }}}
  minReplicas: {{ $v.autoscaling.minReplicas }}
  maxReplicas: {{ $v.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: {{ $v.autoscaling.targetCPUUtilizationPercentage }}}
{{- end }}
{{- if $v.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $full }}
  labels:
    {{- include "learntrail.labels" $root | nindent 4 }}
    app.kubernetes.io/name: {{ $def.name }}
spec:
  {{- if hasKey $v.pdb "minAvailable" }}
  minAvailable: {{ $v.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $v.pdb.maxUnavailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- toYaml $selector | nindent 6 }}
{{- end }}
{{- if $root.Values.networkPolicy.enabled }}
{{- $public := list }}
{{- range $def.ports }}{{ if .public }}{{ $public = append $public .name }}{{ end }}{{ end }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $full }}
  labels:
    {{- include "learntrail.labels" $root | nindent 4 }}
    app.kubernetes.io/name: {{ $def.name }}
spec:
  podSelector:
    matchLabels:
      {{- toYaml $selector | nindent 6 }}
  {{- /* no public port and no egress rule: nothing in, nothing out but the shared rules */}}
  {{- $egress := or $def.egressPorts $def.egressTo }}
  policyTypes:
    {{- if or $public (not $egress) }}
    - Ingress
    {{- end }}
    {{- if or $egress (not $public) }}
    - Egress
    {{- end }}
  {{- if $public }}
  ingress:
    - ports:
        {{- range $public }}
        - {protocol: TCP, port: {{ . }}}
        {{- end }}
  {{- end }}
  {{- if $egress }}
  egress:
    {{- if $def.egressPorts }}
    - ports:
        {{- range $def.egressPorts }}
        - {protocol: TCP, port: {{ . }}}
        {{- end }}
    {{- end }}
    {{- range $def.egressTo }}
    - to:
        - podSelector:
            matchLabels:
              app.kubernetes.io/name: {{ .service }}
              app.kubernetes.io/instance: {{ $root.Release.Name }}
      ports:
        - {protocol: TCP, port: {{ .port }}}
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}

{{- /* A setting's value, quoted. A whole number in values (ROTATOR_MAX_PENDING: 5000000) is
written as one: YAML reads it as a float, which `quote` alone writes as 5e+06. */}}
{{- define "learntrail.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- . | int64 | quote -}}
{{- else -}}
{{- . | quote -}}
{{- end -}}
{{- end -}}
