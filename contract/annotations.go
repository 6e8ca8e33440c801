package contract

const prefix = "consul.hashicorp.com/"

// Annotations users write on a pod (template).
const (
	Inject               = prefix + "connect-inject"
	Service              = prefix + "connect-service"
	ServicePort          = prefix + "connect-service-port"
	Upstreams            = prefix + "connect-service-upstreams"
	TransparentProxy     = prefix + "transparent-proxy"
	OverwriteProbes      = prefix + "transparent-proxy-overwrite-probes"
	ExcludeInboundPorts  = prefix + "transparent-proxy-exclude-inbound-ports"
	ExcludeOutboundPorts = prefix + "transparent-proxy-exclude-outbound-ports"
	ExcludeOutboundCIDRs = prefix + "transparent-proxy-exclude-outbound-cidrs"
	ExcludeUIDs          = prefix + "transparent-proxy-exclude-uids"
	EnvoyExtraArgs       = prefix + "envoy-extra-args"
	ServiceTags          = prefix + "service-tags"
	// ServiceMetaPrefix is followed by the meta key:
	// consul.hashicorp.com/service-meta-<key>: <value>.
	ServiceMetaPrefix    = prefix + "service-meta-"
	SidecarCPULimit      = prefix + "sidecar-proxy-cpu-limit"
	SidecarCPURequest    = prefix + "sidecar-proxy-cpu-request"
	SidecarMemoryLimit   = prefix + "sidecar-proxy-memory-limit"
	SidecarMemoryRequest = prefix + "sidecar-proxy-memory-request"
	EnableMetrics        = prefix + "enable-metrics"
	EnableMetricsMerging = prefix + "enable-metrics-merging"
	MergedMetricsPort    = prefix + "merged-metrics-port"
	PrometheusScrapePort = prefix + "prometheus-scrape-port"
	PrometheusScrapePath = prefix + "prometheus-scrape-path"
	ServiceMetricsPort   = prefix + "service-metrics-port"
	ServiceMetricsPath   = prefix + "service-metrics-path"
	// ConsulDNS sends the pod's DNS to Consul DNS ("true") or leaves it
	// with the cluster DNS ("false"); absent: the webhook's default
	// (consul-k8s' dns.enableRedirection).
	ConsulDNS = prefix + "consul-dns"
)

// Prefix is what every Consul annotation starts with: one meshlet does not
// implement is admitted with a warning naming it.
const Prefix = prefix

// Annotations meshlet writes (the first three as consul-k8s does, so that
// tools reading consul-k8s' pods read meshlet's too).
const (
	InjectStatus   = prefix + "connect-inject-status"
	Injected       = "injected"
	TProxyStatus   = prefix + "transparent-proxy-status"
	TProxyEnabled  = "enabled"
	RedirectConfig = prefix + "redirect-traffic-config"
	// RegistrationKey holds a Registration as JSON.
	RegistrationKey = "meshlet.io/registration"
)

// InjectedByOther says whether a pod's annotations are another injector's
// (consul-k8s'): injected, without the registration meshlet's webhook
// writes in the very admission that injects a pod. meshlet neither injects
// such a pod again, nor registers, repairs or deletes it, and leaves its
// redirection to the config (or init container) consul-k8s gave it.
func InjectedByOther(ann map[string]string) bool {
	_, registered := ann[RegistrationKey]
	return ann[InjectStatus] != "" && !registered
}
