package webhook

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/meshlet/meshlet/contract"
)

// Data planes the sidecar can run.
const (
	DataPlaneEnvoy  = "envoy"  // Envoy with an inline bootstrap: what users run
	DataPlaneConsul = "consul" // Consul's built-in proxy: where Envoy cannot run
	// DataPlaneMeshlet is `meshlet proxy`: L4 with transparent proxy,
	// where Envoy cannot run.
	DataPlaneMeshlet = "meshlet"
)

// Config is the webhook's configuration; its fields follow consul-k8s'
// connectInject.* Helm values, so a values file carries over.
type Config struct {
	// DefaultInject injects pods without a connect-inject annotation
	// (connectInject.default).
	DefaultInject bool
	// AllowNamespaces and DenyNamespaces (k8sAllowNamespaces,
	// k8sDenyNamespaces): deny wins; "*" allows every namespace.
	AllowNamespaces, DenyNamespaces []string
	// DataPlane is DataPlaneEnvoy, DataPlaneConsul or DataPlaneMeshlet.
	DataPlane   string
	EnvoyImage  string // imageEnvoy
	ConsulImage string // the image with the consul binary (DataPlaneConsul)
	// MeshletImage is meshlet's image, whose entrypoint is the meshlet
	// binary: DataPlaneMeshlet's sidecar, and DataPlaneEnvoy's login and
	// metrics-merging sidecars.
	MeshletImage string
	// NativeSidecar runs the proxy as a native sidecar (an init container
	// with restartPolicy Always; Kubernetes 1.29+): up before the app and
	// other init containers, and a Job completes when its app exits. false:
	// a regular container.
	NativeSidecar bool
	// FastStart, with NativeSidecar, makes the sidecar of a pod that runs
	// until deleted (restartPolicy Always) and has no init containers of
	// its own a regular container that holds the app, when the data plane
	// has a hold (meshlet): kubelet starts an app one PLEG relist after a
	// native sidecar, but right after a regular container's hook
	// (docs/benchmarks.md#meshed-pod-start). Jobs and pods with init
	// containers keep the native sidecar (placeSidecar).
	FastStart bool
	// TransparentProxy is the default of the transparent-proxy annotation
	// (connectInject.transparentProxy.defaultEnabled).
	TransparentProxy bool
	// OverwriteProbes is the default of transparent-proxy-overwrite-probes
	// (connectInject.transparentProxy.defaultOverwriteProbes).
	OverwriteProbes bool
	// Resources of the sidecar (connectInject.sidecarProxy.resources).
	Resources corev1.ResourceRequirements
	Metrics   MetricsDefaults
	// ConsulNamespaces (global.enableConsulNamespaces and
	// connectInject.consulNamespaces).
	ConsulNamespaces ConsulNamespaces
	// AgentHTTPPort and AgentGRPCPort are the node's Consul client agent's
	// ports, on the node's IP (HOST_IP).
	AgentHTTPPort, AgentGRPCPort int
	// AgentTLS, when its HTTPSPort is set, sends the sidecar to the Consul
	// agent's HTTPS port instead of AgentHTTPPort, and Envoy to its gRPC
	// TLS port instead of AgentGRPCPort.
	AgentTLS AgentTLS
	// ACLAuthMethod is the Consul Kubernetes auth method a pod's sidecar
	// logs in with (consul-k8s' -acl-auth-method); empty: a Consul without
	// ACLs. Its binding rule gives a login the service identity of the
	// pod's ServiceAccount, so with one a pod's Consul service must be
	// named like its ServiceAccount (checkIdentity).
	ACLAuthMethod string
	// ConsulDNS is where injected pods' DNS goes when it goes to Consul
	// (consul-k8s' dns.enableRedirection and the consul-dns annotation).
	ConsulDNS ConsulDNS
	// NodeAgentPort is meshlet's node agent's HTTP port on the node's IP
	// (the chart's agent.port), where data plane meshlet's sidecar reports
	// a refused login for the node agent to record as an Event.
	NodeAgentPort int
}

// AgentTLS is how a sidecar reaches the Consul agent over TLS.
type AgentTLS struct {
	// HTTPSPort is the Consul agent's HTTPS port, on the node's IP; 0: the
	// sidecars use the plain HTTP port.
	HTTPSPort int
	// GRPCPort is the Consul agent's gRPC TLS port (8503), where data
	// plane envoy's Envoy gets its configuration over TLS.
	GRPCPort int
	// CAPEM is the CA the sidecar verifies the Consul agent's certificate
	// with, in PEM; the webhook writes it into the sidecar's environment.
	CAPEM string
	// ServerName is checked in the Consul agent's certificate; empty: the
	// node's IP the sidecar dials.
	ServerName string
}

// ConsulDNS is Consul DNS redirection: with it, meshlet-cni sends every
// DNS query of the pod (UDP and TCP port 53, whatever nameserver) to IP on
// port 53, a Service in front of the Consul agents' DNS; the agents answer
// *.consul and recurse every other name to the cluster DNS. The rules ride
// on transparent proxy's: a pod without it keeps the cluster DNS.
type ConsulDNS struct {
	// Default sends the DNS of pods without a consul-dns annotation to
	// Consul (consul-k8s' -enable-consul-dns, dns.enableRedirection).
	Default bool
	// IP is Consul DNS's address (the Consul DNS Service's ClusterIP) at
	// this admission; empty: not known, and Unavailable says why. A pod
	// that would have its DNS sent there is then denied: admitted, it
	// would lose every name, the cluster's included.
	IP string
	// Unavailable says why IP is empty, in a denial's words.
	Unavailable string
}

// MetricsDefaults are connectInject.metrics.*.
type MetricsDefaults struct {
	DefaultEnabled              bool
	DefaultEnableMerging        bool
	DefaultMergedMetricsPort    int
	DefaultPrometheusScrapePort int
	DefaultPrometheusScrapePath string
}

// ConsulNamespaces is where registrations go in Consul Enterprise.
type ConsulNamespaces struct {
	Enabled              bool
	DestinationNamespace string // single destination (default "default")
	MirroringK8S         bool
	MirroringK8SPrefix   string
}

// DefaultConfig is consul-k8s' chart defaults with meshlet's data plane.
func DefaultConfig() Config {
	return Config{
		AllowNamespaces:  []string{"*"},
		DataPlane:        DataPlaneEnvoy,
		EnvoyImage:       "envoyproxy/envoy:v1.33.0",
		ConsulImage:      "hashicorp/consul:1.22.0",
		NativeSidecar:    true,
		FastStart:        true,
		TransparentProxy: true,
		OverwriteProbes:  true,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("100Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("100Mi")},
		},
		Metrics: MetricsDefaults{DefaultEnableMerging: false, DefaultMergedMetricsPort: 20100,
			DefaultPrometheusScrapePort: 20200, DefaultPrometheusScrapePath: "/metrics"},
		ConsulNamespaces: ConsulNamespaces{DestinationNamespace: "default"},
		AgentHTTPPort:    contract.ConsulAgentHTTPPort,
		AgentGRPCPort:    8502,
		NodeAgentPort:    contract.NodeAgentHTTPPort,
	}
}

// Validate reports a configuration the webhook cannot serve with.
func (c Config) Validate() error {
	switch {
	case c.DataPlane != DataPlaneEnvoy && c.DataPlane != DataPlaneConsul && c.DataPlane != DataPlaneMeshlet:
		return fmt.Errorf("data plane %q: expected %s, %s or %s", c.DataPlane, DataPlaneEnvoy, DataPlaneConsul, DataPlaneMeshlet)
	case c.DataPlane == DataPlaneConsul && (c.TransparentProxy || c.OverwriteProbes):
		return fmt.Errorf("data plane consul (Consul's built-in proxy) has no transparent outbound listener and serves no expose paths: transparent proxy (%v) and probe rewriting (%v) must be off by default with it (connectInject.transparentProxy.defaultEnabled, defaultOverwriteProbes; the chart turns them off)", c.TransparentProxy, c.OverwriteProbes)
	case c.DataPlane == DataPlaneConsul && c.ConsulDNS.Default:
		return fmt.Errorf("data plane consul (Consul's built-in proxy) has no transparent proxy, whose rules send a pod's DNS to Consul DNS: Consul DNS redirection cannot be on by default with it (dns.enableRedirection)")
	case c.ConsulDNS.IP != "" && !validIP(c.ConsulDNS.IP):
		return fmt.Errorf("the Consul DNS address %q: expected an IP address (the Consul DNS Service's ClusterIP)", c.ConsulDNS.IP)
	case c.DataPlane == DataPlaneEnvoy && c.EnvoyImage == "":
		return fmt.Errorf("data plane envoy needs an Envoy image")
	case c.DataPlane == DataPlaneConsul && c.ConsulImage == "":
		return fmt.Errorf("data plane consul needs an image with the consul binary")
	case c.DataPlane == DataPlaneMeshlet && c.MeshletImage == "":
		return fmt.Errorf("data plane meshlet needs meshlet's image")
	case len(c.AllowNamespaces) == 0:
		return fmt.Errorf("k8sAllowNamespaces is empty: no pod could be injected (use [\"*\"] for all)")
	case slices.Contains(c.DenyNamespaces, "*"):
		return fmt.Errorf("k8sDenyNamespaces contains \"*\": no pod could be injected")
	case c.ACLAuthMethod != "" && strings.TrimSpace(c.ACLAuthMethod) != c.ACLAuthMethod:
		return fmt.Errorf("ACL auth method %q: expected a Consul auth method's name, without surrounding spaces", c.ACLAuthMethod)
	case c.AgentTLS.HTTPSPort != 0 && c.DataPlane == DataPlaneEnvoy && c.AgentTLS.GRPCPort == 0:
		return fmt.Errorf("the Consul agent's HTTPS port %d with data plane envoy but no gRPC TLS port: Envoy would get its configuration over plain gRPC; give the agent's gRPC TLS port (8503)", c.AgentTLS.HTTPSPort)
	case c.AgentTLS.GRPCPort != 0 && c.AgentTLS.HTTPSPort == 0:
		return fmt.Errorf("the Consul agent's gRPC TLS port %d without its HTTPS port: TLS is on for both or neither", c.AgentTLS.GRPCPort)
	case c.AgentTLS.GRPCPort < 0 || c.AgentTLS.GRPCPort > 65535:
		return fmt.Errorf("the Consul agent's gRPC TLS port %d: expected a port 1-65535, or 0 for none", c.AgentTLS.GRPCPort)
	case c.AgentTLS.HTTPSPort != 0 && c.AgentTLS.CAPEM == "":
		return fmt.Errorf("the Consul agent's HTTPS port %d without its CA: the sidecars could not verify the Consul agent", c.AgentTLS.HTTPSPort)
	case c.AgentTLS.HTTPSPort < 0 || c.AgentTLS.HTTPSPort > 65535:
		return fmt.Errorf("the Consul agent's HTTPS port %d: expected a port 1-65535, or 0 for none", c.AgentTLS.HTTPSPort)
	case c.ACLAuthMethod != "" && c.DataPlane == DataPlaneEnvoy && !c.NativeSidecar:
		return fmt.Errorf("ACL auth method %s with data plane envoy needs native sidecars (Kubernetes 1.29 or newer): Envoy must start after its login sidecar has written its token, which regular containers cannot order", c.ACLAuthMethod)
	case c.ACLAuthMethod != "" && c.DataPlane == DataPlaneEnvoy && c.MeshletImage == "":
		return fmt.Errorf("ACL auth method %s with data plane envoy needs meshlet's image: Envoy's login sidecar runs from it", c.ACLAuthMethod)
	case (c.Metrics.DefaultEnabled || c.Metrics.DefaultEnableMerging) && c.DataPlane == DataPlaneEnvoy && c.MeshletImage == "":
		return fmt.Errorf("metrics on by default (metrics.defaultEnabled, defaultEnableMerging) with data plane envoy need meshlet's image: the sidecar beside Envoy that serves the scrape port runs from it")
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"agent HTTP port", c.AgentHTTPPort}, {"agent gRPC port", c.AgentGRPCPort}, {"node agent port", c.NodeAgentPort},
		{"metrics.defaultMergedMetricsPort", c.Metrics.DefaultMergedMetricsPort},
		{"metrics.defaultPrometheusScrapePort", c.Metrics.DefaultPrometheusScrapePort}} {
		if p.v < 1 || p.v > 65535 {
			return fmt.Errorf("%s %d: expected a port 1-65535", p.name, p.v)
		}
	}
	return nil
}

// validIP is what meshlet-cni takes as ConsulDNSIP: an address without a
// zone.
func validIP(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Zone() == ""
}
