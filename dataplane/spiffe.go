package dataplane

import (
	"fmt"
	"net/url"
	"strings"
)

// ServiceID is a Consul service's SPIFFE identity, the URI SAN of its
// leaf certificate: spiffe://<trust domain>[/ap/<partition>]/ns/<ns>/dc/<dc>/svc/<service>.
type ServiceID struct {
	TrustDomain, Partition, Namespace, Datacenter, Service string
}

// ParseServiceID reads a service identity from a certificate's URI SAN.
func ParseServiceID(u *url.URL) (ServiceID, error) {
	if u == nil || u.Scheme != "spiffe" || u.Host == "" {
		return ServiceID{}, fmt.Errorf("SPIFFE ID %q: expected spiffe://<trust domain>/<path>", u)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	id := ServiceID{TrustDomain: u.Host}
	if len(parts) == 8 && parts[0] == "ap" {
		id.Partition, parts = parts[1], parts[2:]
	}
	if len(parts) != 6 || parts[0] != "ns" || parts[2] != "dc" || parts[4] != "svc" ||
		parts[1] == "" || parts[3] == "" || parts[5] == "" {
		return ServiceID{}, fmt.Errorf("SPIFFE ID %q: expected a service's, .../ns/<namespace>/dc/<datacenter>/svc/<service>", u)
	}
	id.Namespace, id.Datacenter, id.Service = parts[1], parts[3], parts[5]
	return id, nil
}

// URI is the identity as its certificate carries it.
func (id ServiceID) URI() string {
	ap := ""
	if id.Partition != "" && id.Partition != "default" {
		ap = "/ap/" + id.Partition
	}
	return fmt.Sprintf("spiffe://%s%s/ns/%s/dc/%s/svc/%s", id.TrustDomain, ap, orDefault(id.Namespace), id.Datacenter, id.Service)
}

// SNI is the server name a client sends to the service's sidecar, in
// Consul's format, so that an Envoy sidecar on the other side routes it
// as it would a call from another Envoy.
func (id ServiceID) SNI() string {
	if id.Partition == "" || id.Partition == "default" {
		return strings.Join([]string{id.Service, orDefault(id.Namespace), id.Datacenter, "internal", id.TrustDomain}, ".")
	}
	return strings.Join([]string{id.Service, orDefault(id.Namespace), id.Partition, id.Datacenter, "internal-v1", id.TrustDomain}, ".")
}

// Same reports whether a peer's identity is id's service: trust domain,
// partition, namespace and name; the datacenter is not compared, since a
// service's instances may answer from another one after a failover.
func (id ServiceID) Same(peer ServiceID) bool {
	return strings.EqualFold(id.TrustDomain, peer.TrustDomain) && orDefault(id.Partition) == orDefault(peer.Partition) &&
		orDefault(id.Namespace) == orDefault(peer.Namespace) && id.Service == peer.Service
}

func orDefault(s string) string {
	if s == "" {
		return "default"
	}
	return s
}
