package cluster

import (
	"context"
	"errors"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshlet/meshlet/contract"
)

// The webhook as the local cluster runs it: the chart's two replicas of
// `meshlet webhook` with a self-managed certificate (meshlet.go), data
// plane meshlet (Envoy cannot run on these machines).
const (
	MeshletNamespace = "meshlet"
	WebhookName      = "meshlet-webhook"
	webhookPort      = 8080
)

// webhookProbe names the dry-run pod's ServiceAccount and Consul service:
// with ACLs the webhook admits only a pod whose service is named like its
// ServiceAccount, which is not "default".
const webhookProbe = "webhook-probe"

// WebhookInjects dry-runs the creation of an annotated pod in the default
// namespace and checks the API server returns it injected.
func WebhookInjects(ctx context.Context, cs kubernetes.Interface) error {
	_, err := cs.CoreV1().ServiceAccounts("default").Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: webhookProbe}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: webhookProbe + "-",
			Annotations: map[string]string{contract.Inject: "true", contract.Service: webhookProbe}},
		Spec: corev1.PodSpec{ServiceAccountName: webhookProbe, Containers: []corev1.Container{{Name: "app", Image: StaticServerImage,
			Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
	}
	got, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return err
	}
	if got.Annotations[contract.InjectStatus] != contract.Injected {
		return errors.New("the API server admitted an annotated pod without injecting it")
	}
	return nil
}
