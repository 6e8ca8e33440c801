package webhook

import (
	"fmt"
	"path"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/contract"
)

// defaultServiceAccount is the ServiceAccount a pod runs as when it names
// none.
const defaultServiceAccount = "default"

// serviceAccountTokenDir is the mount holding the pod's ServiceAccount
// token.
var serviceAccountTokenDir = path.Dir(contract.ServiceAccountTokenFile)

// serviceAccountTokenMount is the mount of the pod's ServiceAccount token
// that Kubernetes gave the pod's containers, for the sidecar's login. The
// API server's ServiceAccount admission adds it before the webhooks run,
// to the containers there are then: the sidecar, added later, gets a copy.
func serviceAccountTokenMount(pod *corev1.Pod) (corev1.VolumeMount, bool) {
	for _, c := range append(append([]corev1.Container{}, pod.Spec.Containers...), pod.Spec.InitContainers...) {
		for _, m := range c.VolumeMounts {
			if m.MountPath == serviceAccountTokenDir {
				m.ReadOnly = true
				return m, true
			}
		}
	}
	return corev1.VolumeMount{}, false
}

// checkIdentity refuses, on a Consul with ACLs, a pod whose sidecar could
// not log in as its Consul service, so that it is denied now rather than
// left unready at its start. The auth method's binding rule gives a login
// the service identity named like the pod's ServiceAccount, and none to
// ServiceAccount "default" (consul-k8s' rule, which meshlet's docs set up):
// a pod naming another service would get no leaf certificate of it, and
// must not (its ServiceAccount is not that service's). A pod without the
// connect-service annotation takes its name from the Kubernetes Service
// that selects it, which the node agent checks when it registers the pod.
func checkIdentity(pod *corev1.Pod, service string, cfg Config) error {
	if cfg.ACLAuthMethod == "" {
		return nil
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = defaultServiceAccount
	}
	if _, ok := serviceAccountTokenMount(pod); !ok {
		return fmt.Errorf("no container of the pod mounts its ServiceAccount token at %s (automountServiceAccountToken false?): with Consul ACLs (auth method %s) the sidecar logs in with it; let Kubernetes mount it",
			serviceAccountTokenDir, cfg.ACLAuthMethod)
	}
	switch {
	case sa == defaultServiceAccount:
		return fmt.Errorf("the pod runs as ServiceAccount %q: with Consul ACLs (auth method %s) a sidecar logs in as its pod's ServiceAccount, and %q gets no identity; run the pod as a ServiceAccount named like its Consul service",
			sa, cfg.ACLAuthMethod, defaultServiceAccount)
	case service != "" && service != sa:
		return fmt.Errorf("annotation %s is %q but the pod's ServiceAccount is %q: with Consul ACLs (auth method %s) a pod's Consul service must be named like its ServiceAccount, whose identity its sidecar logs in with",
			contract.Service, service, sa, cfg.ACLAuthMethod)
	}
	return nil
}
