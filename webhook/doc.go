// Package webhook is meshlet's mutating admission webhook: it decides
// injection, validates every consul.hashicorp.com/* annotation (denying the
// pod with a message naming annotation, value and expectation), adds the
// Envoy sidecar container and writes the annotations the CNI plugin and the
// node agent read. Nothing else. See docs/architecture.md.
package webhook
