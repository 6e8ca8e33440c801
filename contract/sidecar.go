package contract

// The injected sidecar, whatever its data plane: consul-k8s' numbers, so
// that its redirect config and its registrations read the same.
const (
	// ProxyUID is the sidecar's UID and GID; the pod's rules let its
	// traffic out unredirected, so no other container may run as it.
	ProxyUID = 5995
	// ProxyInboundPort is the sidecar's public (mTLS) listener, where the
	// rules send the pod's inbound TCP and where Consul sends other
	// proxies.
	ProxyInboundPort = 20000
	// ProxyOutboundPort is the transparent outbound listener, where the
	// rules send the pod's outbound TCP.
	ProxyOutboundPort = 15001
	// ProxyMetricsPort is where meshlet's proxy serves /metrics and /ready
	// on the pod's loopback when the pod has no metrics set-up.
	ProxyMetricsPort = 20200
)

// The sidecar's environment, from the downward API: kubelet expands
// EnvServiceID and EnvProxyID from the pod's namespace and name (a
// Deployment's pod has no name at admission), so they equal ServiceID and
// ProxyID. EnvHostIP is the node's address, where its Consul agent
// listens.
const (
	EnvServiceID = "SERVICE_ID"
	EnvProxyID   = "PROXY_ID"
	EnvHostIP    = "HOST_IP"
	// EnvConsulCACertPEM holds, in PEM, the CA the sidecar verifies the
	// Consul agent's HTTPS certificate with: the webhook writes it into
	// the sidecar's spec (a CA certificate is public), so no Secret of the
	// Consul namespace need reach the pod's.
	EnvConsulCACertPEM = "CONSUL_CACERT_PEM"
	// The pod's own, which the proxy's login puts on its ACL token.
	EnvPodName      = "POD_NAME"
	EnvPodNamespace = "POD_NAMESPACE"
	EnvPodUID       = "POD_UID"
)

// The containers the webhook adds: consul-k8s' names for Envoy's and
// Consul's proxies (dashboards and scripts look for them), meshlet's
// proxy, and data plane envoy's login and metrics-merging sidecars. A
// pod's own containers may not take them, and the node agent skips them
// when it looks for the app's.
const (
	EnvoySidecarName        = "envoy-sidecar"
	ConsulSidecarName       = "consul-sidecar"
	MeshletSidecarName      = "meshlet-proxy"
	EnvoyLoginSidecarName   = "meshlet-login"
	EnvoyMetricsSidecarName = "meshlet-metrics"
)

// SidecarContainers are the five names above.
var SidecarContainers = []string{EnvoySidecarName, ConsulSidecarName, MeshletSidecarName, EnvoyLoginSidecarName, EnvoyMetricsSidecarName}

// ServiceAccountTokenFile is where Kubernetes mounts a pod's
// ServiceAccount token in its containers: the webhook gives the sidecar a
// copy of that mount, and the proxy logs in to Consul with the token.
const ServiceAccountTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// ConsulAgentHTTPPort is the Consul client agent's HTTP port on the node's
// address, as the official Consul chart exposes it.
const ConsulAgentHTTPPort = 8500
