// Package kubeclienttest adapts client-go's fake clientset to
// kubeclient.Interface for unit tests. Only tests import it: it links the
// clientset that kubeclient exists to keep out of the binaries.
package kubeclienttest

import (
	"context"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/kubernetes"

	"github.com/meshlet/meshlet/kubeclient"
)

// FromClientset is cs as a kubeclient.Interface.
func FromClientset(cs kubernetes.Interface) kubeclient.Interface { return clientset{cs} }

type clientset struct{ cs kubernetes.Interface }

func (c clientset) Pods(ns string) kubeclient.Resource[*corev1.Pod, *corev1.PodList] {
	return c.cs.CoreV1().Pods(ns)
}

func (c clientset) Services(ns string) kubeclient.Resource[*corev1.Service, *corev1.ServiceList] {
	return c.cs.CoreV1().Services(ns)
}

func (c clientset) Events(ns string) kubeclient.Resource[*corev1.Event, *corev1.EventList] {
	return c.cs.CoreV1().Events(ns)
}

func (c clientset) Secrets(ns string) kubeclient.Resource[*corev1.Secret, *corev1.SecretList] {
	return c.cs.CoreV1().Secrets(ns)
}

func (c clientset) DaemonSets(ns string) kubeclient.Resource[*appsv1.DaemonSet, *appsv1.DaemonSetList] {
	return c.cs.AppsV1().DaemonSets(ns)
}

func (c clientset) MutatingWebhookConfigurations() kubeclient.Resource[*admissionv1.MutatingWebhookConfiguration, *admissionv1.MutatingWebhookConfigurationList] {
	return c.cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
}

func (c clientset) Leases(ns string) kubeclient.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return c.cs.CoordinationV1().Leases(ns)
}

func (c clientset) CreateToken(ctx context.Context, ns, sa string, req *authnv1.TokenRequest, opts metav1.CreateOptions) (*authnv1.TokenRequest, error) {
	return c.cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, opts)
}

func (c clientset) ServerVersion() (*version.Info, error) { return c.cs.Discovery().ServerVersion() }
