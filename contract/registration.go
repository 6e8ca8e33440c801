package contract

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// RegistrationVersion is the version of Registration this build writes and
// reads. A node agent meeting another version refuses the pod (and says
// so) rather than guess at fields it does not know.
const RegistrationVersion = 1

// Registration is everything the node agent needs to register an injected
// pod with its node's Consul client agent, decided and validated once, at
// admission. It is stored as JSON in the RegistrationKey annotation.
type Registration struct {
	Version int `json:"version"`
	// Service is the Consul service name; empty: the Kubernetes Service
	// that selects the pod, which the agent looks up (a Service may be
	// created after the pod).
	Service string `json:"service,omitempty"`
	// Port is the port the application serves on; 0: none (a client).
	Port int `json:"port,omitempty"`
	// DataPlane is the sidecar: "envoy", "consul" (Consul's built-in
	// proxy) or "meshlet" (meshlet's L4 proxy).
	DataPlane        string            `json:"dataPlane"`
	TransparentProxy bool              `json:"transparentProxy"`
	Upstreams        []Upstream        `json:"upstreams,omitempty"`
	Tags             []string          `json:"tags,omitempty"`
	Meta             map[string]string `json:"meta,omitempty"`
	// ExposePaths are the HTTP probes the webhook moved to the proxy: the
	// agent registers them as the proxy's Expose paths.
	ExposePaths []ExposePath `json:"exposePaths,omitempty"`
	Metrics     *Metrics     `json:"metrics,omitempty"`
	// ConsulNamespace is the Consul Enterprise namespace the service goes
	// to; empty when namespaces are not used.
	ConsulNamespace string `json:"consulNamespace,omitempty"`
	// AuthMethod is the Consul Kubernetes auth method the pod's sidecar
	// logs in with; empty: a Consul without ACLs. With one, the login's
	// identity is the pod's ServiceAccount's name, so the node agent
	// registers the pod only under that name. Written only when set, so
	// that node agents older than the field read every other pod's
	// registration as before.
	AuthMethod string `json:"authMethod,omitempty"`
}

// Upstream is one entry of connect-service-upstreams.
type Upstream struct {
	// Name is the destination service, or the prepared query's name.
	Name          string `json:"name"`
	PreparedQuery bool   `json:"preparedQuery,omitempty"`
	Namespace     string `json:"namespace,omitempty"`
	Datacenter    string `json:"datacenter,omitempty"`
	LocalPort     int    `json:"localPort"`
}

// ExposePath is one HTTP path the proxy serves without mTLS on
// ListenerPort, forwarding to the application's LocalPathPort.
type ExposePath struct {
	ListenerPort  int    `json:"listenerPort"`
	Path          string `json:"path"`
	LocalPathPort int    `json:"localPathPort"`
}

// Metrics is the pod's metrics setup when enable-metrics is on.
type Metrics struct {
	Merging            bool   `json:"merging"`
	MergedPort         int    `json:"mergedPort,omitempty"`
	ScrapePort         int    `json:"scrapePort"`
	ScrapePath         string `json:"scrapePath"`
	ServiceMetricsPort int    `json:"serviceMetricsPort,omitempty"`
	ServiceMetricsPath string `json:"serviceMetricsPath,omitempty"`
}

// Encode is the annotation's value.
func (r Registration) Encode() (string, error) {
	r.Version = RegistrationVersion
	b, err := json.Marshal(r)
	if err != nil {
		return "", fmt.Errorf("encode %s: %w", RegistrationKey, err)
	}
	return string(b), nil
}

// DecodeRegistration reads the annotation's value: unknown fields and
// other versions are errors.
func DecodeRegistration(s string) (Registration, error) {
	var r Registration
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Registration{}, fmt.Errorf("annotation %s: %w", RegistrationKey, err)
	}
	if r.Version != RegistrationVersion {
		return Registration{}, fmt.Errorf("annotation %s: version %d, this build reads version %d", RegistrationKey, r.Version, RegistrationVersion)
	}
	return r, nil
}

// A pod's IDs on its node's Consul agent: <namespace>_<pod> and
// <namespace>_<pod>-sidecar-proxy. '_' cannot occur in a Kubernetes name,
// so they are unique on a node across namespaces. The webhook's sidecar
// builds them from downward-API env at start (a Deployment's pod has no
// name at admission); the node agent from the pod object.
const (
	ServiceIDFormat = "%s_%s"
	ProxyIDFormat   = ServiceIDFormat + "-sidecar-proxy"
)

// ServiceID is the pod's service instance ID.
func ServiceID(namespace, pod string) string { return fmt.Sprintf(ServiceIDFormat, namespace, pod) }

// ProxyID is the pod's sidecar proxy ID.
func ProxyID(namespace, pod string) string { return fmt.Sprintf(ProxyIDFormat, namespace, pod) }
