{{/*
Names. Every object is named from meshlet.fullname: the release name when it
contains the chart's name (release "meshlet": meshlet-agent,
meshlet-webhook, meshlet-cni), else <release>-meshlet. Truncated to 40
characters so that the longest derived name (<fullname>-webhook-tls, the
webhook's Secret) stays a valid name.
*/}}
{{- define "meshlet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "meshlet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "meshlet.agentName" -}}{{ include "meshlet.fullname" . }}-agent{{- end }}
{{- define "meshlet.webhookName" -}}{{ include "meshlet.fullname" . }}-webhook{{- end }}
{{- define "meshlet.cniName" -}}{{ include "meshlet.fullname" . }}-cni{{- end }}
{{- define "meshlet.reaperName" -}}{{ include "meshlet.fullname" . }}-token-reaper{{- end }}
{{/* The Secret the webhook keeps its self-managed CA and certificate in. */}}
{{- define "meshlet.webhookSecretName" -}}{{ include "meshlet.webhookName" . }}-tls{{- end }}

{{- define "meshlet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "meshlet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "meshlet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshlet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* meshlet's image, for the agent, the webhook and data plane meshlet. */}}
{{- define "meshlet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
A default sidecar resource flag: "-<flag>" and its value, "" (none) for null.
Numbers (cpu: 1) are written as Kubernetes reads them.
*/}}
{{- define "meshlet.quantity" -}}
{{- if kindIs "float64" . }}{{ . | toString }}{{ else if kindIs "int64" . }}{{ . | toString }}{{ else }}{{ . | default "" }}{{ end }}
{{- end }}

{{/*
The webhook's flags (docs/webhook.md). Every value of the table in
README.md is passed explicitly, so the rendered Deployment shows the whole
configuration and a changed binary default cannot change an installed
cluster behind the chart's back. Booleans as -flag=value: Go's flag package
reads "-flag false" as -flag followed by an argument.
*/}}
{{- define "meshlet.webhookArgs" -}}
{{- $ci := .Values.connectInject -}}
{{- $res := $ci.sidecarProxy.resources -}}
- webhook
- -tls-self-managed
- -service-name
- {{ include "meshlet.webhookName" . }}
- -webhook-config-name
- {{ include "meshlet.webhookName" . }}
- -tls-secret-name
- {{ include "meshlet.webhookSecretName" . }}
- -listen
- {{ printf ":%d" (int $ci.port) | quote }}
- -default-inject={{ $ci.default }}
{{- range $ci.k8sAllowNamespaces }}
- -allow-k8s-namespace
- {{ . | quote }}
{{- end }}
{{- range $ci.k8sDenyNamespaces }}
- -deny-k8s-namespace
- {{ . | quote }}
{{- end }}
{{- /* Consul's built-in proxy has no transparent outbound listener and
serves no expose paths: off with it, whatever the values (NOTES says so). */}}
{{- $consulDP := eq $ci.dataPlane "consul" }}
- -enable-transparent-proxy={{ and $ci.transparentProxy.defaultEnabled (not $consulDP) }}
- -transparent-proxy-default-overwrite-probes={{ and $ci.transparentProxy.defaultOverwriteProbes (not $consulDP) }}
- -data-plane
- {{ $ci.dataPlane }}
- -native-sidecar
- {{ $ci.nativeSidecar | toString | quote }}
- -envoy-image
- {{ .Values.global.imageEnvoy | quote }}
- -consul-image
- {{ .Values.global.image | quote }}
- -meshlet-image
- {{ include "meshlet.image" . | quote }}
- -consul-http-port
- {{ int .Values.consul.httpPort | quote }}
- -consul-grpc-port
- {{ int .Values.consul.grpcPort | quote }}
- -enable-consul-dns={{ include "meshlet.dnsRedirection" . | eq "true" }}
{{- if include "meshlet.dnsEnabled" . }}
{{- with .Values.dns.clusterIP }}
- -consul-dns-ip
- {{ . | quote }}
{{- else }}
- -consul-dns-service
- {{ .Values.consul.dns.service | quote }}
{{- end }}
{{- end }}
{{- with .Values.consul.acl.authMethod }}
- -acl-auth-method
- {{ . | quote }}
- -node-agent-port
- {{ int $.Values.agent.port | quote }}
{{- end }}
{{- if include "meshlet.sidecarTLS" . }}
- -consul-https-port
- {{ int .Values.consul.tls.httpsPort | quote }}
- -consul-grpc-tls-port
- {{ int .Values.consul.tls.grpcPort | quote }}
- -consul-ca-file
- {{ include "meshlet.consulCAFile" . }}
{{- with .Values.consul.tls.serverName }}
- -consul-tls-server-name
- {{ . | quote }}
{{- end }}
{{- include "meshlet.consulServerArgs" . }}
{{- end }}
- -default-sidecar-proxy-cpu-request
- {{ include "meshlet.quantity" (($res.requests | default dict).cpu) | quote }}
- -default-sidecar-proxy-cpu-limit
- {{ include "meshlet.quantity" (($res.limits | default dict).cpu) | quote }}
- -default-sidecar-proxy-memory-request
- {{ include "meshlet.quantity" (($res.requests | default dict).memory) | quote }}
- -default-sidecar-proxy-memory-limit
- {{ include "meshlet.quantity" (($res.limits | default dict).memory) | quote }}
- -default-enable-metrics={{ $ci.metrics.defaultEnabled }}
- -default-enable-metrics-merging={{ $ci.metrics.defaultEnableMerging }}
- -default-merged-metrics-port
- {{ int $ci.metrics.defaultMergedMetricsPort | quote }}
- -default-prometheus-scrape-port
- {{ int $ci.metrics.defaultPrometheusScrapePort | quote }}
- -default-prometheus-scrape-path
- {{ $ci.metrics.defaultPrometheusScrapePath | quote }}
- -enable-namespaces={{ .Values.global.enableConsulNamespaces }}
- -consul-destination-namespace
- {{ $ci.consulNamespaces.consulDestinationNamespace | quote }}
- -enable-k8s-namespace-mirroring={{ $ci.consulNamespaces.mirroringK8S }}
- -k8s-namespace-mirroring-prefix
- {{ $ci.consulNamespaces.mirroringK8SPrefix | quote }}
- -shutdown-delay
- {{ $ci.shutdownDelay | quote }}
- -log-level
- {{ default .Values.global.logLevel $ci.logLevel }}
- -log-json={{ .Values.global.logJSON }}
{{- end }}

{{/*
Consul DNS (consul-k8s' dns.*). "true" when pods may have their DNS sent
to Consul: dns.enabled true or "-" (consul-k8s' global.enabled).
*/}}
{{- define "meshlet.dnsEnabled" -}}
{{- if ne (toString .Values.dns.enabled) "false" }}true{{ end }}
{{- end }}

{{/* "true" when every injected pod's DNS goes to Consul by default:
dns.enableRedirection true, or "-" (newer consul-k8s' default) with
transparent proxy on by default; never with dns.enabled false, nor with
data plane consul, which has no transparent proxy (an explicit true fails
meshlet.validate there). */}}
{{- define "meshlet.dnsRedirection" -}}
{{- $r := toString .Values.dns.enableRedirection }}
{{- $tproxy := and .Values.connectInject.transparentProxy.defaultEnabled (ne .Values.connectInject.dataPlane "consul") }}
{{- if and (include "meshlet.dnsEnabled" .) (or (eq $r "true") (and (eq $r "-") $tproxy)) }}true{{ end }}
{{- end }}

{{/* The name of the Consul DNS Service the webhook reads, when it reads
one. */}}
{{- define "meshlet.dnsServiceName" -}}
{{- if and .Values.connectInject.enabled (include "meshlet.dnsEnabled" .) (not .Values.dns.clusterIP) }}
{{- last (splitList "/" .Values.consul.dns.service) }}
{{- end }}
{{- end }}

{{/* The Consul agent's CA as a volume, when TLS is on and a CA is given. */}}
{{- define "meshlet.consulCAVolume" -}}
{{- $c := .Values.consul }}
{{- $ca := $c.tls.caCert }}
{{- if and $c.tls.enabled $ca.secretName }}
- name: consul-ca
  secret:
    secretName: {{ $ca.secretName }}
    items:
      - key: {{ $ca.key }}
        path: {{ base (include "meshlet.consulCAFile" .) }}
{{- else if and $c.tls.enabled $ca.configMapName }}
- name: consul-ca
  configMap:
    name: {{ $ca.configMapName }}
    items:
      - key: {{ $ca.key }}
        path: {{ base (include "meshlet.consulCAFile" .) }}
{{- end }}
{{- end }}

{{/* "true" when the sidecars talk TLS to the Consul agent: TLS on and its
CA given, which the webhook hands them. */}}
{{- define "meshlet.sidecarTLS" -}}
{{- $c := .Values.consul }}
{{- if and $c.tls.enabled (or $c.tls.caCert.secretName $c.tls.caCert.configMapName) }}true{{ end }}
{{- end }}

{{/* Where the agent's container sees the Consul CA and the ACL token. */}}
{{- define "meshlet.consulCAFile" -}}/consul/tls/ca.crt{{- end }}
{{- define "meshlet.consulTokenFile" -}}/consul/acl/token{{- end }}

{{/*
How the node agent and the token reaper reach the Consul client agent of
their node, at $(HOST_IP): -http-addr, and with TLS the CA and the server
name.
*/}}
{{- define "meshlet.consulAddrArgs" -}}
{{- $c := .Values.consul }}
- -http-addr
{{- if $c.tls.enabled }}
- {{ printf "https://$(HOST_IP):%d" (int $c.tls.httpsPort) | quote }}
{{- if or $c.tls.caCert.secretName $c.tls.caCert.configMapName }}
- -ca-file
- {{ include "meshlet.consulCAFile" . }}
{{- end }}
{{- if $c.tls.serverName }}
- -tls-server-name
- {{ $c.tls.serverName | quote }}
{{- end }}
{{- include "meshlet.consulServerArgs" . }}
{{- else }}
- {{ printf "$(HOST_IP):%d" (int $c.httpPort) | quote }}
{{- end }}
{{- end }}

{{/* Where the Connect CA's roots are fetched: with TLS, a CA and
consul.servers.address. */}}
{{- define "meshlet.consulServerArgs" -}}
{{- $c := .Values.consul }}
{{- if and $c.tls.enabled (or $c.tls.caCert.secretName $c.tls.caCert.configMapName) $c.servers.address }}
- -consul-server-addr
- {{ $c.servers.address | quote }}
{{- with $c.servers.tlsServerName }}
- -consul-server-tls-server-name
- {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The agent's flags (docs/agent.md). */}}
{{- define "meshlet.agentArgs" -}}
{{- $a := .Values.agent -}}
{{- $c := .Values.consul -}}
- agent
- -listen
- {{ printf "$(HOST_IP):%d" (int $a.port) | quote }}
{{- include "meshlet.consulAddrArgs" . }}
{{- if $c.acl.tokenSecret.name }}
- -token-file
- {{ include "meshlet.consulTokenFile" . }}
{{- end }}
- -enable-namespaces={{ .Values.global.enableConsulNamespaces }}
{{- if and .Values.global.enableConsulNamespaces $c.acl.crossNamespacePolicy }}
- -consul-cross-namespace-acl-policy
- {{ $c.acl.crossNamespacePolicy | quote }}
{{- end }}
- -cni-bin-dir
- /host/opt/cni/bin
- -cni-conf-dir
- /host/etc/cni/net.d
- -cni-kubeconfig
- {{ printf "%s/meshlet-cni.kubeconfig" (trimSuffix "/" $a.cni.kubeconfigDir) | quote }}
- -cni-agent-socket
- {{ printf "%s/cni.sock" (trimSuffix "/" $a.cni.socketDir) | quote }}
{{- if $a.cni.logDir }}
- -cni-log-file
- {{ printf "%s/meshlet-cni.log" (trimSuffix "/" $a.cni.logDir) | quote }}
{{- end }}
{{- if $a.cni.logLevel }}
- -cni-log-level
- {{ $a.cni.logLevel }}
{{- end }}
- -cni-service-account
- {{ include "meshlet.cniName" . }}
- -repair-mode
- {{ $a.repairMode }}
- -iptables-mode
- {{ $a.iptablesMode }}
- -log-level
- {{ default .Values.global.logLevel $a.logLevel }}
- -log-json={{ .Values.global.logJSON }}
{{- end }}

{{/* "true" when the token reaper is rendered: an auth method to reap and
the reaper's own token. */}}
{{- define "meshlet.reaperEnabled" -}}
{{- $acl := .Values.consul.acl }}
{{- if and $acl.authMethod $acl.reaper.tokenSecret.name }}true{{ end }}
{{- end }}

{{/* The token reaper's flags (reaper/cmd.go). */}}
{{- define "meshlet.reaperArgs" -}}
{{- $r := .Values.consul.acl.reaper -}}
- reaper
- -auth-method
- {{ .Values.consul.acl.authMethod | quote }}
- -listen
- {{ printf ":%d" (int $r.port) | quote }}
{{- include "meshlet.consulAddrArgs" . }}
- -token-file
- {{ include "meshlet.consulTokenFile" . }}
- -interval
- {{ $r.interval | quote }}
- -grace
- {{ $r.grace | quote }}
- -namespace
- {{ .Release.Namespace }}
- -lease-name
- {{ include "meshlet.reaperName" . }}
- -log-level
- {{ default .Values.global.logLevel $r.logLevel }}
- -log-json={{ .Values.global.logJSON }}
{{- end }}

{{/*
consul-k8s' names (global.tls, global.acls, connectInject.
overrideAuthMethodName) set the consul.* values they mean, so that every
template reads one place. Included first by each template that reads
consul.*; setting the same value twice changes nothing. A consul-k8s name
and meshlet's own given different values fail, naming both.
*/}}
{{- define "meshlet.consulK8sValues" -}}
{{- $c := .Values.consul }}
{{- $gtls := .Values.global.tls | default dict }}
{{- if $gtls.enabled }}
{{- $_ := set $c.tls "enabled" true }}
{{- end }}
{{- $gca := $gtls.caCert | default dict }}
{{- with $gca.secretName }}
{{- if and $c.tls.caCert.secretName (ne $c.tls.caCert.secretName .) }}
{{- fail (printf "global.tls.caCert.secretName %q and consul.tls.caCert.secretName %q name different Secrets: give one" . $c.tls.caCert.secretName) }}
{{- end }}
{{- $_ := set $c.tls.caCert "secretName" . }}
{{- $_ := set $c.tls.caCert "key" (default "tls.crt" $gca.secretKey) }}
{{- end }}
{{- $method := .Values.connectInject.overrideAuthMethodName }}
{{- if and (not $method) (.Values.global.acls | default dict).manageSystemACLs }}
{{- $method = "consul-k8s-auth-method" }}
{{- end }}
{{- with $method }}
{{- if and $c.acl.authMethod (ne $c.acl.authMethod .) }}
{{- fail (printf "auth method %q (global.acls.manageSystemACLs or connectInject.overrideAuthMethodName) and consul.acl.authMethod %q differ: give one" . $c.acl.authMethod) }}
{{- end }}
{{- $_ := set $c.acl "authMethod" . }}
{{- end }}
{{- if and (.Values.global.acls | default dict).manageSystemACLs .Values.global.enableConsulNamespaces (not $c.acl.crossNamespacePolicy) }}
{{- $_ := set $c.acl "crossNamespacePolicy" "cross-namespace-policy" }}
{{- end }}
{{- end }}

{{/*
Checks the schema cannot express; each fails the render naming the value.
*/}}
{{- define "meshlet.validate" -}}
{{- include "meshlet.consulK8sValues" . }}
{{- with .Values.connectInject.envoyExtraArgs }}
{{- fail (printf "connectInject.envoyExtraArgs %q: meshlet webhook has no flag for default Envoy arguments; set the consul.hashicorp.com/envoy-extra-args annotation on the pods instead, and leave this null" (toString .)) }}
{{- end }}
{{- with .Values.consul.acl.crossNamespacePolicy }}
{{- if not $.Values.global.enableConsulNamespaces }}
{{- fail (printf "consul.acl.crossNamespacePolicy %q is set but global.enableConsulNamespaces is false: no Consul namespace is created to attach it to" .) }}
{{- end }}
{{- end }}
{{- $ca := .Values.consul.tls.caCert }}
{{- if and $ca.secretName $ca.configMapName }}
{{- fail "consul.tls.caCert: give secretName or configMapName, not both" }}
{{- end }}
{{- if and (or $ca.secretName $ca.configMapName) (not .Values.consul.tls.enabled) }}
{{- fail "consul.tls.caCert is set but consul.tls.enabled is false: the CA would not be used" }}
{{- end }}
{{- if and .Values.consul.servers.address (not (and .Values.consul.tls.enabled (or $ca.secretName $ca.configMapName))) }}
{{- fail (printf "consul.servers.address %q is set without consul.tls.enabled and consul.tls.caCert: the Connect CA's roots are fetched there over TLS verified with that CA" .Values.consul.servers.address) }}
{{- end }}
{{- if and .Values.consul.acl.authMethod (eq .Values.connectInject.dataPlane "envoy") (eq (toString .Values.connectInject.nativeSidecar) "false") }}
{{- fail (printf "consul.acl.authMethod %q with connectInject.dataPlane envoy and connectInject.nativeSidecar false: Envoy's login sidecar must start before Envoy, which only native sidecars can (Kubernetes 1.29 or newer)" .Values.consul.acl.authMethod) }}
{{- end }}
{{- $dnsRedir := toString .Values.dns.enableRedirection }}
{{- if and (eq $dnsRedir "true") (eq .Values.connectInject.dataPlane "consul") }}
{{- fail "dns.enableRedirection true with connectInject.dataPlane consul: Consul DNS redirection is part of the transparent-proxy rules, and Consul's built-in proxy has no transparent proxy; use data plane meshlet or envoy, or leave dns.enableRedirection false" }}
{{- end }}
{{- if and (eq $dnsRedir "true") (not (include "meshlet.dnsEnabled" .)) }}
{{- fail "dns.enableRedirection true with dns.enabled false: no pod's DNS can go to Consul then (consul-k8s redirects only with both); set dns.enabled, or leave dns.enableRedirection false" }}
{{- end }}
{{- if and .Values.dns.clusterIP (not (include "meshlet.dnsEnabled" .)) }}
{{- fail (printf "dns.clusterIP %q is set but dns.enabled is false: the address would not be used" .Values.dns.clusterIP) }}
{{- end }}
{{- if and (eq $dnsRedir "true") (not .Values.connectInject.transparentProxy.defaultEnabled) }}
{{- fail "dns.enableRedirection true with connectInject.transparentProxy.defaultEnabled false: Consul DNS redirection is part of the transparent-proxy rules, so no pod would get it by default; turn transparent proxy on, or leave dns.enableRedirection false and annotate the pods that want it (with transparent proxy on)" }}
{{- end }}
{{- $cni := .Values.agent.cni }}
{{- range $dir := list $cni.kubeconfigDir $cni.socketDir }}
{{- if or (eq (trimSuffix "/" $dir) (trimSuffix "/" $cni.confDir)) (hasPrefix (printf "%s/" (trimSuffix "/" $cni.confDir)) $dir) }}
{{- fail (printf "agent.cni: %s is inside the CNI conf dir %s, where the container runtime would read it as network configuration" $dir $cni.confDir) }}
{{- end }}
{{- end }}
{{- end }}
