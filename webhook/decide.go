package webhook

import (
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/contract"
)

// neverInjected are namespaces meshlet never touches, whatever the
// configuration says: the cluster's own components live there.
var neverInjected = []string{"kube-system", "kube-public"}

// decide says whether a pod is injected, and why not when it is not. A
// connect-inject value that is not a boolean is an error: the pod is
// denied rather than guessed about.
func decide(pod *corev1.Pod, namespace string, cfg Config) (inject bool, why string, err error) {
	switch {
	case pod.Annotations[contract.InjectStatus] != "":
		return false, "already injected", nil
	case pod.Spec.HostNetwork:
		return false, "host network", nil
	case slices.Contains(neverInjected, namespace):
		return false, "namespace " + namespace + " is never injected", nil
	case slices.Contains(cfg.DenyNamespaces, namespace):
		return false, "namespace " + namespace + " is in k8sDenyNamespaces", nil
	case !slices.Contains(cfg.AllowNamespaces, "*") && !slices.Contains(cfg.AllowNamespaces, namespace):
		return false, "namespace " + namespace + " is not in k8sAllowNamespaces", nil
	}
	v, err := parseInject(pod.Annotations)
	switch {
	case err != nil:
		return false, "", err
	case v == nil && !cfg.DefaultInject:
		return false, "no " + contract.Inject + " annotation and injection is opt-in", nil
	case v != nil && !*v:
		return false, contract.Inject + " is false", nil
	}
	return true, "", nil
}
