// Package webhook is meshlet's mutating admission webhook: it decides
// injection, validates every consul.hashicorp.com/* annotation (denying the
// pod with a message naming annotation, value and expectation), adds the
// sidecar proxy of the configured data plane (Envoy, Consul's built-in
// proxy or meshlet's own proxy), gives the pod's containers their
// upstreams' env, points HTTP probes at the proxy's expose listeners under
// transparent proxy, and writes annotations: those the CNI plugin and the
// node agent read, Prometheus' scrape annotations and kubectl's default
// container. Nothing else. See docs/architecture.md and docs/webhook.md.
package webhook
