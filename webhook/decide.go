package webhook

import (
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/contract"
)

// neverInjected are namespaces meshlet never touches, whatever the
// configuration says: the cluster's own components live there.
var neverInjected = []string{"kube-system", "kube-public"}

// SkippedOtherInjector is why a pod another injector (consul-k8s) injected
// is admitted as it is: meshlet neither injects it again nor registers it.
const SkippedOtherInjector = "injected by another injector (" + contract.InjectStatus + " without meshlet's registration): admitted as it is, never registered by meshlet"

// shorten keeps a long value readable in a message.
func shorten(v string) string {
	if len(v) > 80 {
		return v[:77] + "..."
	}
	return v
}

// decide says whether a pod is injected, and why not when it is not. A
// connect-inject value that is not a boolean is an error: the pod is
// denied rather than guessed about.
func decide(pod *corev1.Pod, namespace string, cfg Config) (inject bool, why string, err error) {
	switch {
	case contract.InjectedByOther(pod.Annotations):
		// consul-k8s', which also writes the redirect config.
		return false, SkippedOtherInjector, nil
	case pod.Annotations[contract.InjectStatus] != "":
		// meshlet's webhook writes its registration in the admission that
		// injects a pod, and a pod is admitted once: one found here was
		// copied (a pod template made from an injected pod), and the node
		// agent would register a proxy the pod does not have.
		return false, "", invalid{contract.RegistrationKey, shorten(pod.Annotations[contract.RegistrationKey]),
			"written by meshlet's webhook when it injects a pod, never copied: remove it and " + contract.InjectStatus + " from the pod template"}
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
