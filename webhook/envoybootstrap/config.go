// Package envoybootstrap renders the bootstrap Envoy starts with as the
// webhook's sidecar (envoy --config-yaml): what `consul connect envoy
// -bootstrap` prints for a sidecar proxy, with the values known only on the
// node left as $(VAR) references for kubelet to expand. It is written
// without go-control-plane (document.go says why); its tests hold it to
// Envoy's schema and to Consul's output. See docs/envoy-bootstrap.md.
package envoybootstrap

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/meshlet/meshlet/contract"
)

// Config is what the inline bootstrap depends on. YAML renders the same
// bootstrap `consul connect envoy -bootstrap` prints for a sidecar proxy
// (see docs/envoy-bootstrap.md for the few differences and why), so that
// Envoy can start without an init container or a shared volume.
//
// String fields may hold Kubernetes `$(VAR)` references: kubelet expands
// them in the container's args from its env before Envoy starts.
//
// There is no ready listener: Consul adds one only when asked
// (-envoy-ready-bind-address/-port) or for ingress gateways.
type Config struct {
	ProxyID       string // usually "$(PROXY_ID)": expanded by kubelet
	ServiceName   string // the Consul service the proxy fronts (node.cluster)
	AgentHost     string // usually "$(HOST_IP)"
	AgentGRPCPort int    // 8502
	AdminBind     string // "127.0.0.1"
	AdminPort     int    // 19000
	Namespace     string // Consul Enterprise namespace; "" when not used
	Partition     string // Consul Enterprise admin partition; "" when not used

	// Datacenter is the Consul datacenter of the node's Consul agent.
	// Consul reads it from the Consul agent and tags every stat with it
	// (consul.source.datacenter); "" leaves that tag out, as Consul does
	// when it has no datacenter.
	Datacenter string

	// Token is the ACL token Envoy presents to the Consul agent's xDS server
	// (x-consul-token). "" when ACLs are off, which is what Consul prints
	// then. A literal token would be readable by anyone who can read the
	// pod; a `$(VAR)` reference to a Secret-backed env var keeps it out of
	// the pod spec, though it is still in Envoy's argv on the node.
	Token string

	// AgentCAPEM, when set, is the CA bundle (PEM) Envoy verifies the
	// Consul agent's gRPC TLS certificate with: the agent's gRPC port
	// speaks TLS (8503). It is written inline, as Consul does, so that no
	// file need reach the pod. AgentServerName, when set, is the name the
	// certificate must carry (and the SNI).
	AgentCAPEM      string
	AgentServerName string

	// TokenFromLogin leaves the ADS stream's gRPC service, and with it the
	// token, out of the YAML: the login sidecar writes them, with the
	// token of the pod's own login, to the file Envoy reads with -c
	// (contract.EnvoyADSBootstrap), and Envoy merges the YAML into it.
	TokenFromLogin bool
}

// Names Consul gives the parts of the bootstrap. The Consul agent's xDS
// server and Consul's dashboards depend on them, so they are not ours to
// choose.
const (
	localAgentCluster = contract.EnvoyLocalAgentCluster
	tokenHeader       = contract.ConsulTokenHeader
	defaultTenancy    = "default" // namespace and partition when unset
)

// varRef is a whole-value Kubernetes variable reference such as
// $(HOST_IP): only these may stand in for an address, because anything else
// must already be an IP (a STATIC cluster and the admin listener do not
// resolve names).
var varRef = regexp.MustCompile(`^\$\([A-Za-z_][A-Za-z0-9_]*\)$`)

// YAML returns the value for Envoy's --config-yaml. `$(VAR)` references are
// left as they are (double-quoted, so the expanded value is always read as
// a string, even an IPv6 address).
func (c Config) YAML() (string, error) {
	if err := c.check(); err != nil {
		return "", fmt.Errorf("envoy bootstrap for proxy %q: %w", c.ProxyID, err)
	}
	out, err := render(c.doc())
	if err != nil {
		return "", fmt.Errorf("envoy bootstrap for proxy %q: %w", c.ProxyID, err)
	}
	return out, nil
}

func (c Config) check() error {
	var errs []error
	if c.ProxyID == "" {
		errs = append(errs, errors.New("ProxyID is empty"))
	}
	if c.ServiceName == "" {
		errs = append(errs, errors.New("ServiceName is empty"))
	}
	if !ipOrVarRef(c.AgentHost) {
		errs = append(errs, fmt.Errorf("AgentHost %q is neither an IP address nor a $(VAR) reference", c.AgentHost))
	}
	if !ipOrVarRef(c.AdminBind) {
		errs = append(errs, fmt.Errorf("AdminBind %q is neither an IP address nor a $(VAR) reference", c.AdminBind))
	}
	if c.AgentGRPCPort < 1 || c.AgentGRPCPort > 65535 {
		errs = append(errs, fmt.Errorf("AgentGRPCPort %d is not in 1-65535", c.AgentGRPCPort))
	}
	if c.AdminPort < 1 || c.AdminPort > 65535 {
		errs = append(errs, fmt.Errorf("AdminPort %d is not in 1-65535", c.AdminPort))
	}
	// kubelet turns $$ into $, so the bootstrap Envoy got would not be the
	// one rendered here.
	for name, v := range map[string]string{
		"ProxyID": c.ProxyID, "ServiceName": c.ServiceName, "AgentHost": c.AgentHost,
		"AdminBind": c.AdminBind, "Namespace": c.Namespace, "Partition": c.Partition,
		"Datacenter": c.Datacenter, "Token": c.Token, "AgentCAPEM": c.AgentCAPEM, "AgentServerName": c.AgentServerName,
	} {
		if strings.Contains(v, "$$") {
			errs = append(errs, fmt.Errorf("%s %q contains $$, which kubelet would rewrite to $", name, v))
		}
		// Envoy's protos hold UTF-8 strings only.
		if !utf8.ValidString(v) {
			errs = append(errs, fmt.Errorf("%s %q is not valid UTF-8", name, v))
		}
	}
	// The token is sent as an HTTP/2 header value: Envoy refuses NUL, CR
	// and LF in one.
	if strings.ContainsAny(c.Token, "\x00\r\n") {
		errs = append(errs, fmt.Errorf("token %q contains NUL, CR or LF, which an HTTP header value cannot hold", c.Token))
	}
	if c.TokenFromLogin && c.Token != "" {
		errs = append(errs, errors.New("both a Token and TokenFromLogin: the token comes from the login sidecar's file"))
	}
	if c.AgentServerName != "" && c.AgentCAPEM == "" {
		errs = append(errs, fmt.Errorf("AgentServerName %q without AgentCAPEM: a server name is checked only over TLS", c.AgentServerName))
	}
	if c.AgentCAPEM != "" && !strings.Contains(c.AgentCAPEM, "-----BEGIN CERTIFICATE-----") {
		errs = append(errs, errors.New("AgentCAPEM holds no PEM certificate"))
	}
	return errors.Join(errs...)
}

func ipOrVarRef(s string) bool {
	return net.ParseIP(s) != nil || varRef.MatchString(s)
}

func orDefault(s string) string {
	if s == "" {
		return defaultTenancy
	}
	return s
}
