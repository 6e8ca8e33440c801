// Package daemon is meshlet's node agent ("meshlet agent", a DaemonSet): it
// installs meshlet-cni and chains it into the node's CNI config, watches the
// pods of its node, registers injected pods (service and sidecar proxy) with
// the node's Consul client agent, keeps their health in step with pod
// readiness, removes stale registrations and repairs pods that started
// before the plugin was installed. See docs/architecture.md.
package daemon
