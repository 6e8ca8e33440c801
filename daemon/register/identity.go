package register

import (
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// ErrIdentity: on a Consul with ACLs, the pod's Consul service is not the
// identity its sidecar logs in with.
var ErrIdentity = errors.New("the pod's Consul service is not its ServiceAccount's")

// checkIdentity refuses to register, with an auth method, a pod under a
// service its ServiceAccount is not: its sidecar's login gets the
// identity named like the ServiceAccount and no other, so the
// registration would serve nobody, and a pod must never stand in the
// catalog as a service it cannot prove to be. The webhook denies the
// pods whose connect-service annotation says so; this catches the name a
// Kubernetes Service gives later.
func checkIdentity(pod *corev1.Pod, service, from, authMethod string) error {
	if authMethod == "" {
		return nil
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	if service != sa {
		return fmt.Errorf("%w: its Consul service is %q (%s) but its ServiceAccount is %q; with Consul ACLs (auth method %s) its sidecar can only log in as %q: rename one so that they match",
			ErrIdentity, service, from, sa, authMethod, sa)
	}
	return nil
}
