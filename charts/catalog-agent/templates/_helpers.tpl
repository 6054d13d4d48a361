{{/*
Named templates of the catalog-agent chart.

Two kinds:
- internal ones (names, labels) as `helm create` makes them, taking the chart context;
- the public ones that your own pod specs `include`, each taking a dict whose "ctx" is this
  chart's context: `.` inside this chart, `(index .Subcharts "catalog-agent")` in a chart that
  depends on it. They print YAML list items (or a flow list), to place under the right key
  with `nindent`:

  initContainers:
    {{- include "catalog-agent.getInitContainer" (dict "ctx" $ca "step" "train" "runId" $run) | nindent 4 }}
  containers:
    - name: main
      command: {{ include "catalog-agent.wrapCommand" (dict "ctx" $ca "command" (list "python" "train.py")) }}
      volumeMounts:
        {{- include "catalog-agent.mainVolumeMounts" (dict "ctx" $ca) | nindent 8 }}
    {{- include "catalog-agent.putContainer" (dict "ctx" $ca "step" "train" "runId" $run "mode" "wait") | nindent 4 }}
  volumes:
    {{- include "catalog-agent.volumes" (dict "ctx" $ca) | nindent 4 }}

Public templates and their parameters (docs/kubernetes.md has the full table):
  catalog-agent.getInitContainer   ctx step runId [name patterns installEntrypoint env dependencies]
  catalog-agent.putContainer       ctx step runId [mode=wait|native|after name patterns when env dependencies]
  catalog-agent.volumes            ctx [data=true]
  catalog-agent.mainVolumeMounts   ctx [data=true]
  catalog-agent.wrapCommand        ctx command
  catalog-agent.workingDir         ctx (the chart context itself; for main with layout magnus)
  catalog-agent.podAnnotations     ctx [containers]
  catalog-agent.serviceAccountName ctx (the chart context itself)
  catalog-agent.podSecurityContext ctx (the chart context itself)
  catalog-agent.imagePullSecrets   ctx (the chart context itself)
*/}}

{{/* Expand the name of the chart. */}}
{{- define "catalog-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A default fully qualified name, truncated at 63 characters (DNS names). If the release name
contains the chart name, it is used as the full name.
*/}}
{{- define "catalog-agent.fullname" -}}
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

{{/* Chart name and version as used by the chart label. */}}
{{- define "catalog-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "catalog-agent.labels" -}}
helm.sh/chart: {{ include "catalog-agent.chart" . }}
{{ include "catalog-agent.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels. */}}
{{- define "catalog-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "catalog-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the agent's pods run as (public: `serviceAccountName: {{ include ... $ca }}`). */}}
{{- define "catalog-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "catalog-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding config.yaml. */}}
{{- define "catalog-agent.configMapName" -}}
{{- include "catalog-agent.fullname" . }}
{{- end }}

{{/* The agent's image reference; the tag defaults to the chart's appVersion. */}}
{{- define "catalog-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Fixed paths inside the pods: where the agent and the entrypoint wrapper look by default. */}}
{{- define "catalog-agent.configDir" -}}/etc/catalog-agent{{- end }}
{{- define "catalog-agent.statusDir" -}}/var/run/catalog-agent{{- end }}
{{- define "catalog-agent.entrypointPath" -}}/var/run/catalog-agent/entrypoint{{- end }}

{{/* True (non-empty) when the catalog's keys follow magnus's layout. */}}
{{- define "catalog-agent.magnusLayout" -}}
{{- if eq (.Values.catalog.config.layout | default "run") "magnus" }}true{{ end }}
{{- end }}

{{/*
The data folder's mount path: the global compute_data_folder; with layout magnus, that
relative folder under workingDir (where the agent and magnus resolve it).
*/}}
{{- define "catalog-agent.dataDir" -}}
{{- $folder := .Values.catalog.config.compute_data_folder | default "/data" }}
{{- if include "catalog-agent.magnusLayout" . }}
{{- $clean := $folder | trimPrefix "./" | trimSuffix "/" }}
{{- if or (eq $clean ".") (eq $clean "") }}
{{- .Values.workingDir }}
{{- else }}
{{- printf "%s/%s" (.Values.workingDir | trimSuffix "/") $clean }}
{{- end }}
{{- else }}
{{- $folder }}
{{- end }}
{{- end }}

{{/*
Public: the working directory a pod's main container needs with layout magnus (where its
relative data folder resolves), e.g. `workingDir: {{ include "catalog-agent.workingDir" $ca }}`.
*/}}
{{- define "catalog-agent.workingDir" -}}
{{- .Values.workingDir }}
{{- end }}

{{/* Public: the pod-level securityContext for pods running the agent (a YAML mapping). */}}
{{- define "catalog-agent.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{/* Public: imagePullSecrets list items (empty when none are set). */}}
{{- define "catalog-agent.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* Check the parameters every container template needs, failing with a clear message. */}}
{{- define "catalog-agent.checkStepParams" -}}
{{- $who := index . 0 }}{{- $p := index . 1 }}
{{- if not (hasKey $p "ctx") }}
{{- fail (printf "%s: pass this chart's context as \"ctx\" (inside the chart: dict \"ctx\" .; from a parent chart: dict \"ctx\" (index .Subcharts \"catalog-agent\"))" $who) }}
{{- end }}
{{- if not $p.step }}
{{- fail (printf "%s: \"step\" is required (the step name: selects dag.steps.<step> and names the manifest)" $who) }}
{{- end }}
{{- if not $p.runId }}
{{- fail (printf "%s: \"runId\" is required (the run id: the catalog folder <prefix>/<run_id>/)" $who) }}
{{- end }}
{{- end }}

{{/* The parts every agent container shares: image, env, resources, securityContext, mounts. */}}
{{- define "catalog-agent.containerCommon" -}}
{{- $p := . }}
{{- $ctx := $p.ctx -}}
image: {{ include "catalog-agent.image" $ctx | quote }}
imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
env:
  - name: CATALOG_AGENT_RUN_ID
    value: {{ $p.runId | quote }}
  - name: CATALOG_AGENT_STEP
    value: {{ $p.step | quote }}
  {{- with $ctx.Values.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with $p.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $ctx.Values.envFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
terminationMessagePolicy: FallbackToLogsOnError
{{- if include "catalog-agent.magnusLayout" $ctx }}
workingDir: {{ $ctx.Values.workingDir }}
{{- end }}
volumeMounts:
  - name: catalog-agent-config
    mountPath: {{ include "catalog-agent.configDir" $ctx }}
    readOnly: true
  - name: catalog-agent-status
    mountPath: {{ include "catalog-agent.statusDir" $ctx }}
  - name: catalog-agent-tmp
    mountPath: /tmp
  {{- if (hasKey $p "data" | ternary $p.data true) }}
  - name: catalog-agent-data
    mountPath: {{ include "catalog-agent.dataDir" $ctx }}
  {{- end }}
{{- with $p.dependencies }}
dependencies: {{ toJson . }}
{{- end }}
{{- end }}

{{/*
Public: the get container, as a list item. An init container in a Job or Pod; in an Argo
containerSet, a container that main depends on.
  ctx step runId        required
  name                  container name (default catalog-get)
  patterns              list of patterns; default: the step entry's get list
  installEntrypoint     first run `catalog-agent install-entrypoint` in an init container named
                        <name>-entrypoint, copying the wrapper into the shared status volume
                        (default true; false in an Argo containerSet, where no wrapper is needed)
  env                   extra env list items
  dependencies          Argo containerSet dependencies
  data                  mount the shared data volume (default true)
*/}}
{{- define "catalog-agent.getInitContainer" -}}
{{- include "catalog-agent.checkStepParams" (list "catalog-agent.getInitContainer" .) }}
{{- $install := hasKey . "installEntrypoint" | ternary .installEntrypoint true }}
{{- $name := .name | default "catalog-get" }}
{{- $args := list "get" }}
{{- range .patterns }}
{{- $args = append $args . }}
{{- end -}}
{{- if $install -}}
- name: {{ $name }}-entrypoint
  command: ["catalog-agent"]
  args: {{ toJson (list "install-entrypoint" (include "catalog-agent.statusDir" .ctx)) }}
  {{- include "catalog-agent.containerCommon" . | nindent 2 }}
{{ end -}}
- name: {{ $name }}
  command: ["catalog-agent"]
  args: {{ toJson $args }}
  {{- include "catalog-agent.containerCommon" . | nindent 2 }}
{{- end }}

{{/*
Public: the put container, as a list item, in one of three modes:
  mode: wait     a regular container beside main: `put --wait` waits for main's exit code
                 (written by the entrypoint wrapper), then puts per the `when` policy;
  mode: native   a native sidecar (init container with restartPolicy: Always, Kubernetes
                 1.29+): `put --on-sigterm` puts when the kubelet stops it after main ended;
  mode: after    plain `put`, for an Argo containerSet where put depends on main.
  ctx step runId        required
  name                  container name (default catalog-put)
  patterns              list of patterns; default: the step entry's put list
  when                  success | failure | always: overrides the `when` key of the
                        configuration (catalog.config.when, or the step entry's; default success)
  env, dependencies, data  as for getInitContainer
*/}}
{{- define "catalog-agent.putContainer" -}}
{{- include "catalog-agent.checkStepParams" (list "catalog-agent.putContainer" .) }}
{{- $mode := .mode | default "wait" }}
{{- $args := list "put" }}
{{- if eq $mode "wait" }}
{{- $args = append $args "--wait" }}
{{- if .ctx.Values.put.waitTimeout }}
{{- $args = concat $args (list "--wait-timeout" (toString .ctx.Values.put.waitTimeout)) }}
{{- end }}
{{- else if eq $mode "native" }}
{{- $args = append $args "--on-sigterm" }}
{{- else if ne $mode "after" }}
{{- fail (printf "catalog-agent.putContainer: mode %q is not one of wait, native, after" $mode) }}
{{- end }}
{{- with .when }}
{{- if not (has . (list "success" "failure" "always")) }}
{{- fail (printf "catalog-agent.putContainer: when %q is not one of success, failure, always" .) }}
{{- end }}
{{- $args = concat $args (list "--when" .) }}
{{- end }}
{{- range .patterns }}
{{- $args = append $args . }}
{{- end -}}
- name: {{ .name | default "catalog-put" }}
  command: ["catalog-agent"]
  args: {{ toJson $args }}
  {{- if eq $mode "native" }}
  restartPolicy: Always
  # The kubelet starts the next containers only once this passes: when put (PID 1) catches
  # SIGTERM. A main that ends at once then cannot get the sidecar its SIGTERM while Python is
  # still starting, when the kernel would discard it (PID 1 without a handler). A kernel that
  # shows no SigCgt (gVisor) lets it pass at once: the window is then open, as without it.
  startupProbe:
    exec:
      command: ["/opt/catalog-agent/bin/python", "-I", "-S", "-c", "import sys; s = open('/proc/1/status').read(); sys.exit('SigCgt:' in s and not int(s.split('SigCgt:')[1].split()[0], 16) >> 14 & 1)"]
    periodSeconds: 1
    failureThreshold: 120
  {{- end }}
  {{- include "catalog-agent.containerCommon" . | nindent 2 }}
{{- end }}

{{/*
Public: the pod's volumes, as list items: the catalog ConfigMap, the status folder shared by
the wrapper and put, a writable /tmp for the agent, and (data: true, the default) the shared
data folder as an emptyDir.
*/}}
{{- define "catalog-agent.volumes" -}}
{{- $ctx := required "catalog-agent.volumes: pass this chart's context as \"ctx\"" .ctx -}}
- name: catalog-agent-config
  configMap:
    name: {{ include "catalog-agent.configMapName" $ctx }}
- name: catalog-agent-status
  emptyDir: {}
- name: catalog-agent-tmp
  emptyDir: {}
{{- if (hasKey . "data" | ternary .data true) }}
- name: catalog-agent-data
  emptyDir:
    {{- with $ctx.Values.dataVolumeSizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
{{- end }}
{{- end }}

{{/*
Public: the main container's volumeMounts, as list items: the status folder (where the
wrapper lives and writes the exit code) and (data: true) the data folder.
*/}}
{{- define "catalog-agent.mainVolumeMounts" -}}
{{- $ctx := required "catalog-agent.mainVolumeMounts: pass this chart's context as \"ctx\"" .ctx -}}
- name: catalog-agent-status
  mountPath: {{ include "catalog-agent.statusDir" $ctx }}
{{- if (hasKey . "data" | ternary .data true) }}
- name: catalog-agent-data
  mountPath: {{ include "catalog-agent.dataDir" $ctx }}
{{- end }}
{{- end }}

{{/*
Public: the main container's command wrapped by the entrypoint wrapper, as a flow list:
  command: {{ include "catalog-agent.wrapCommand" (dict "ctx" $ca "command" (list "python" "train.py")) }}
gives ["/var/run/catalog-agent/entrypoint","--","python","train.py"]. The wrapper runs the
command, forwards SIGTERM/SIGINT, and records its exit code for put.
*/}}
{{- define "catalog-agent.wrapCommand" -}}
{{- $ctx := required "catalog-agent.wrapCommand: pass this chart's context as \"ctx\"" .ctx }}
{{- $command := required "catalog-agent.wrapCommand: \"command\" (a list: the main command and its arguments) is required" .command }}
{{- if not (kindIs "slice" $command) }}
{{- fail "catalog-agent.wrapCommand: \"command\" must be a list, e.g. (list \"python\" \"train.py\")" }}
{{- end }}
{{- toJson (concat (list (include "catalog-agent.entrypointPath" $ctx) "--") $command) }}
{{- end }}

{{/*
Public: the pod's annotations, as mapping lines (empty when there are none), for the pod's own
metadata (a Job's spec.template.metadata, a Pod's metadata, an Argo template's metadata):

  {{- with include "catalog-agent.podAnnotations" (dict "ctx" $ca) }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}

With irsa.keepOutOfMain: eks.amazonaws.com/skip-containers, the comma-separated names of the
containers that run the step's own code (irsa.mainContainers, or the "containers" list given
here), which EKS's pod identity webhook then leaves without the IRSA role.
  ctx           required
  containers    list of container names (default irsa.mainContainers)
*/}}
{{- define "catalog-agent.podAnnotations" -}}
{{- $ctx := required "catalog-agent.podAnnotations: pass this chart's context as \"ctx\"" .ctx -}}
{{- if and (hasKey . "containers") (not (kindIs "slice" .containers)) }}
{{- fail "catalog-agent.podAnnotations: \"containers\" must be a list of container names" }}
{{- end }}
{{- if $ctx.Values.irsa.keepOutOfMain -}}
eks.amazonaws.com/skip-containers: {{ join "," (.containers | default $ctx.Values.irsa.mainContainers) | quote }}
{{- end }}
{{- end }}
