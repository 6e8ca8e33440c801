// Package dataplane is `meshlet proxy`: an L4 sidecar for Consul Connect
// where Envoy cannot run. It speaks only to the node's Consul client agent
// (github.com/hashicorp/consul/api) and uses the standard library for TLS.
//
//   - Identity: the service's leaf certificate and the CA roots, kept
//     current with blocking queries (rotation needs no restart).
//   - Inbound (the public listener): mTLS with a client certificate from
//     the Consul CA required; each connection authorized with the Consul agent,
//     so an intention change applies to the next connection; a denied one
//     is closed without a byte.
//   - Outbound, transparent: the connection's original destination mapped
//     to a mesh service by its virtual address (the Service's ClusterIP),
//     mTLS to a healthy instance's sidecar with the peer's SPIFFE ID
//     checked; other destinations pass through.
//   - Explicit upstreams on 127.0.0.1, expose paths for rewritten probes.
//
// It is L4 only: no HTTP routing, retries, or L7 intentions; those need
// Envoy, which stays the default data plane. See docs/proxy.md.
package dataplane
