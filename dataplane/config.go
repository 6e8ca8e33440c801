package dataplane

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	capi "github.com/hashicorp/consul/api"
)

// Config is what the proxy serves, read from its registration on the
// node's Consul agent (the node agent wrote it from the pod's
// annotations): the proxy needs no configuration of its own.
type Config struct {
	ProxyID string
	// Service is the service the proxy fronts, whose certificate it uses.
	Service ServiceKey
	// Public is the public listener's address (all interfaces, the
	// registration's port); LocalApp is the application's, "" when the
	// service has no port (a client only).
	Public, LocalApp string
	// Outbound is the transparent outbound listener, "" when the proxy is
	// not in transparent mode.
	Outbound  string
	Upstreams []Upstream
	Expose    []ExposePath
}

// Upstream is an explicit upstream: a listener on the pod's loopback for
// one mesh service, of the local datacenter unless Datacenter names
// another, or for the services a prepared query returns.
type Upstream struct {
	Bind    string
	Service ServiceKey // a prepared query's: its name in Name
	// Datacenter is another datacenter's name; "" for the local one.
	Datacenter    string
	PreparedQuery bool
}

// remote reports whether u's instances are not in the local catalog the
// proxy follows: another datacenter's, or a prepared query's.
func (u Upstream) remote() bool { return u.PreparedQuery || u.Datacenter != "" }

// ExposePath serves one HTTP path of the application, without mTLS, on a
// port of its own: kubelet's probes, rewritten by the webhook.
type ExposePath struct {
	Listen, Path, Local string
}

// ConfigFrom reads a proxy registration.
func ConfigFrom(s *capi.AgentService) (Config, error) {
	if s == nil {
		return Config{}, errors.New("no proxy registration")
	}
	if s.Kind != capi.ServiceKindConnectProxy || s.Proxy == nil {
		return Config{}, fmt.Errorf("service %s is not a sidecar proxy (kind %q)", s.ID, s.Kind)
	}
	p := s.Proxy
	if p.DestinationServiceName == "" {
		return Config{}, fmt.Errorf("proxy %s: no destination service", s.ID)
	}
	if s.Port <= 0 || s.Port > 65535 {
		return Config{}, fmt.Errorf("proxy %s: public listener port %d, expected 1-65535", s.ID, s.Port)
	}
	// Port 0: a client-only app (no container port, as the seed's
	// static-client): the public listener stays, with no app behind it.
	if p.LocalServicePort < 0 || p.LocalServicePort > 65535 {
		return Config{}, fmt.Errorf("proxy %s: local service port %d, expected 0-65535", s.ID, p.LocalServicePort)
	}
	local := p.LocalServiceAddress
	if local == "" {
		local = "127.0.0.1"
	}
	c := Config{
		ProxyID: s.ID,
		Service: ServiceKey{Partition: s.Partition, Namespace: s.Namespace, Name: p.DestinationServiceName},
		Public:  net.JoinHostPort("", strconv.Itoa(s.Port)),
	}
	if p.LocalServicePort != 0 {
		c.LocalApp = net.JoinHostPort(local, strconv.Itoa(p.LocalServicePort))
	}
	if p.Mode == capi.ProxyModeTransparent {
		port := 15001
		if p.TransparentProxy != nil && p.TransparentProxy.OutboundListenerPort != 0 {
			port = p.TransparentProxy.OutboundListenerPort
		}
		// REDIRECT in the OUTPUT chain sends to 127.0.0.1 (::1 for IPv6):
		// listening on all addresses takes both.
		c.Outbound = net.JoinHostPort("", strconv.Itoa(port))
	}
	for _, u := range p.Upstreams {
		pq := u.DestinationType == capi.UpstreamDestTypePreparedQuery
		if !pq && u.DestinationType != "" && u.DestinationType != capi.UpstreamDestTypeService {
			return Config{}, fmt.Errorf("proxy %s: upstream %s has destination type %q, expected service or prepared_query", s.ID, u.DestinationName, u.DestinationType)
		}
		// The local datacenter's services come from the catalog the proxy
		// follows; another's are followed one by one (resolve.go). A
		// query is executed in the datacenter it names, the local one
		// when none.
		dc := u.Datacenter
		if dc == s.Datacenter {
			dc = ""
		}
		if u.DestinationPeer != "" {
			return Config{}, fmt.Errorf("proxy %s: upstream %s is on cluster peer %s, which meshlet proxy does not serve (use the envoy data plane)", s.ID, u.DestinationName, u.DestinationPeer)
		}
		if u.LocalBindSocketPath != "" {
			return Config{}, fmt.Errorf("proxy %s: upstream %s binds a unix socket, which meshlet proxy does not serve", s.ID, u.DestinationName)
		}
		if u.LocalBindPort <= 0 || u.LocalBindPort > 65535 {
			return Config{}, fmt.Errorf("proxy %s: upstream %s has local bind port %d, expected 1-65535", s.ID, u.DestinationName, u.LocalBindPort)
		}
		addr := u.LocalBindAddress
		if addr == "" {
			addr = "127.0.0.1"
		}
		ns := u.DestinationNamespace
		if ns == "" {
			ns = s.Namespace
		}
		part := u.DestinationPartition
		if part == "" {
			part = s.Partition
		}
		c.Upstreams = append(c.Upstreams, Upstream{Bind: net.JoinHostPort(addr, strconv.Itoa(u.LocalBindPort)),
			Service: ServiceKey{Partition: part, Namespace: ns, Name: u.DestinationName}, Datacenter: dc, PreparedQuery: pq})
	}
	for _, e := range p.Expose.Paths {
		if e.ListenerPort <= 0 || e.ListenerPort > 65535 || e.LocalPathPort <= 0 || e.LocalPathPort > 65535 {
			return Config{}, fmt.Errorf("proxy %s: expose path %s: ports %d → %d, expected 1-65535", s.ID, e.Path, e.ListenerPort, e.LocalPathPort)
		}
		if e.Protocol != "" && e.Protocol != "http" {
			return Config{}, fmt.Errorf("proxy %s: expose path %s: protocol %q, meshlet proxy serves http", s.ID, e.Path, e.Protocol)
		}
		c.Expose = append(c.Expose, ExposePath{Listen: net.JoinHostPort("", strconv.Itoa(e.ListenerPort)), Path: e.Path,
			Local: net.JoinHostPort("127.0.0.1", strconv.Itoa(e.LocalPathPort))})
	}
	return c, nil
}
