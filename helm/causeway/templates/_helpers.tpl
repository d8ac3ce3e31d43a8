{{/* Labels every object of the chart carries. */}}
{{- define "causeway.labels" -}}
app.kubernetes.io/name: causeway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "causeway.selectorLabels" -}}
app.kubernetes.io/name: causeway
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects. */}}
{{- define "causeway.componentLabels" -}}
{{ include "causeway.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "causeway.image" -}}
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The downward-API env vars the daemons' args refer to as $(VAR). */}}
{{- define "causeway.env" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: NODE_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/* --pod-cidr/--service-cidr/--node-cidr args; empty lists leave discovery to the daemon. */}}
{{- define "causeway.cidrArgs" -}}
{{- range .Values.cluster.podCIDRs }}
- --pod-cidr={{ . }}
{{- end }}
{{- range .Values.cluster.serviceCIDRs }}
- --service-cidr={{ . }}
{{- end }}
{{- range (.Values.cluster.nodeCIDRs | default list) }}
- --node-cidr={{ . }}
{{- end }}
{{- end }}

{{/* Security context of the host-network daemons: root (nft and netlink need
     effective capabilities, which non-root containers do not get) with every
     capability dropped but the ones listed. */}}
{{- define "causeway.hostSecurityContext" -}}
runAsUser: 0
runAsNonRoot: false
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
  add: {{ toJson . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Security context of containers that need no privilege at all. */}}
{{- define "causeway.restrictedSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
  What values.schema.json cannot say. Rendered once (from
  serviceaccounts.yaml) so every install, upgrade and template checks it.
*/}}
{{- define "causeway.validate" -}}
{{- $v := .Values }}
{{- if not $v.cluster.id }}
{{- fail "cluster.id is required: the id this cluster joined the broker with (causeway join writes it into values.yaml)" }}
{{- end }}
{{- if not $v.wireguard.secretName }}
{{- fail "wireguard.secretName is empty: name the Secret that holds key wireguard.key (causeway join's secrets.yaml creates causeway-wireguard)" }}
{{- end }}
{{- if not $v.broker.secretName }}
{{- fail "broker.secretName is empty: name the Secret that holds broker.json (causeway join's secrets.yaml creates causeway-broker)" }}
{{- end }}
{{- if not $v.gateway.nodeSelector }}
{{- fail "gateway.nodeSelector is empty: it would make every node a gateway candidate; label the candidates (kubectl label node NODE causeway.io/gateway=true) and keep the default selector" }}
{{- end }}
{{- range $key, $value := $v.gateway.nodeSelector }}
{{- if not $key }}
{{- fail (printf "gateway.nodeSelector has an empty label key (value %q): a selector needs a label name, e.g. causeway.io/gateway: \"true\"" $value) }}
{{- end }}
{{- if not (regexMatch "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$" $key) }}
{{- fail (printf "gateway.nodeSelector key %q is not a Kubernetes label name (optional DNS prefix and '/', then up to 63 of [A-Za-z0-9-_.]), so it matches no node" $key) }}
{{- end }}
{{- if not (regexMatch "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$" $value) }}
{{- fail (printf "gateway.nodeSelector value %q of key %q is not a Kubernetes label value, so it matches no node" $value $key) }}
{{- end }}
{{- end }}
{{- if and $v.globalnet.enabled (not $v.globalnet.globalCIDR) }}
{{- fail "globalnet.enabled is true but globalnet.globalCIDR is empty: set the global CIDR causeway join allocated (or globalnet.enabled=false when the clusters' CIDRs do not overlap)" }}
{{- end }}
{{- with $v.gateway.sysctls.ipLocalPortRange }}
{{- $r := splitList " " . }}
{{- $lo := index $r 0 | atoi }}
{{- $hi := index $r 1 | atoi }}
{{- if or (ge $lo $hi) (gt $hi 65535) (lt $lo 1024) }}
{{- fail (printf "gateway.sysctls.ipLocalPortRange %q is not \"LOW HIGH\" with 1024 <= LOW < HIGH <= 65535" .) }}
{{- end }}
{{- end }}
{{- if and $v.coredns.patch (gt (int $v.coredns.cacheSeconds) (int $v.lighthouse.ttl)) }}
{{- fail (printf "coredns.cacheSeconds (%d) is above lighthouse.ttl (%d): CoreDNS would serve answers after Lighthouse withdrew them" (int $v.coredns.cacheSeconds) (int $v.lighthouse.ttl)) }}
{{- end }}
{{- if and (eq $v.lighthouse.antiAffinity "hard") $v.lighthouse.affinity }}
{{- fail "lighthouse.affinity replaces the chart's anti-affinity: leave lighthouse.antiAffinity at soft when setting lighthouse.affinity" }}
{{- end }}
{{- end }}
