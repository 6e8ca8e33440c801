// Package contract holds what meshlet's parts agree on, and nothing else:
// the pod annotations users write (consul-k8s' names, so existing
// manifests work unchanged) and the ones meshlet writes; the typed,
// versioned registration the webhook writes for the node agent, so that
// the node agent never parses user input again; the sidecar's UID, ports
// and environment; the meta keys of what the node agent registers with
// the Consul agent; meshlet-cni's conflist entry with the node agent's
// socket it points at; and the node agent's HTTP port, where a sidecar
// reports its own pod's problems (SidecarProblem).
//
// It is the leaf every part imports and it imports nothing outside Go's
// standard library (TestLeaf), so that a part can name the contract
// without linking another part: the per-pod proxy reads its port here,
// not from the rules library.
package contract
