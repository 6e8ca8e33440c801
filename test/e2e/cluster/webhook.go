package cluster

import (
	"context"
	"errors"
	"fmt"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/annotations"
)

// The webhook as the local cluster runs it: two replicas of `meshlet
// webhook` with a self-managed certificate, data plane consul (Envoy cannot
// run on these machines). The chart (deploy/daemonset) will install the
// same objects for users.
const (
	MeshletNamespace = "meshlet"
	WebhookName      = "meshlet-webhook"
	webhookPort      = 8080
)

// WebhookArgs are the webhook's flags on the local cluster: data plane
// meshlet (`meshlet proxy`, from the same image as the webhook and the
// agent), since Envoy cannot run on these machines.
func WebhookArgs() []string {
	return []string{"webhook", "-tls-self-managed", "-service-name", WebhookName,
		"-webhook-config-name", WebhookName, "-data-plane", "meshlet", "-meshlet-image", MeshletImage,
		"-listen", fmt.Sprintf(":%d", webhookPort), "-log-level", "debug", "-shutdown-delay", "1s"}
}

// WebhookConfiguration is the MutatingWebhookConfiguration. failurePolicy
// Fail: an annotated pod created while the webhook is down would run
// without its proxy, so it is refused and its controller retries. The
// namespaceSelector keeps the control plane's namespaces and meshlet's own
// out of the webhook's path, so a broken webhook cannot stop the cluster
// from repairing itself, or the webhook's own pods from starting.
func WebhookConfiguration() *admissionregv1.MutatingWebhookConfiguration {
	return &admissionregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: WebhookName},
		Webhooks: []admissionregv1.MutatingWebhook{{
			Name: "inject.meshlet.io",
			ClientConfig: admissionregv1.WebhookClientConfig{Service: &admissionregv1.ServiceReference{
				Namespace: MeshletNamespace, Name: WebhookName, Path: ptr.To("/mutate"), Port: ptr.To[int32](443)}},
			Rules: []admissionregv1.RuleWithOperations{{
				Operations: []admissionregv1.OperationType{admissionregv1.Create},
				Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"},
					Resources: []string{"pods"}, Scope: ptr.To(admissionregv1.NamespacedScope)},
			}},
			FailurePolicy: ptr.To(admissionregv1.Fail),
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn,
				Values: []string{"kube-system", "kube-public", "kube-node-lease", MeshletNamespace}}}},
			// A pod labelled meshlet.io/webhook=skip bypasses the webhook
			// entirely: the escape hatch for a critical pod outside those
			// namespaces while the webhook is broken.
			ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: "meshlet.io/webhook", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"skip"}}}},
			SideEffects:             ptr.To(admissionregv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          ptr.To[int32](10),
			ReinvocationPolicy:      ptr.To(admissionregv1.NeverReinvocationPolicy),
		}},
	}
}

func webhookRBAC() (*corev1.ServiceAccount, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding, *rbacv1.Role, *rbacv1.RoleBinding) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: WebhookName, Namespace: MeshletNamespace}}
	subj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: WebhookName, Namespace: MeshletNamespace}}
	cr := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: WebhookName}, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{"admissionregistration.k8s.io"}, Resources: []string{"mutatingwebhookconfigurations"},
		ResourceNames: []string{WebhookName}, Verbs: []string{"get", "patch"}}}}
	crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: WebhookName}, Subjects: subj,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: WebhookName}}
	// create cannot be limited by name (the name is not known to RBAC
	// before the object exists).
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: WebhookName, Namespace: MeshletNamespace}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{WebhookName + "-tls"}, Verbs: []string{"get", "update"}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create"}},
	}}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: WebhookName, Namespace: MeshletNamespace}, Subjects: subj,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: WebhookName}}
	return sa, cr, crb, role, rb
}

func webhookDeployment() *appsv1.Deployment {
	labels := map[string]string{"app": WebhookName}
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: path, Port: intstr.FromInt32(webhookPort), Scheme: corev1.URISchemeHTTPS}}, PeriodSeconds: 1}
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: WebhookName, Namespace: MeshletNamespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName:            WebhookName,
					TerminationGracePeriodSeconds: ptr.To[int64](5),
					SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
					Containers: []corev1.Container{{
						Name: "webhook", Image: MeshletImage, ImagePullPolicy: corev1.PullNever,
						Args: WebhookArgs(),
						Env: []corev1.EnvVar{{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}},
						Ports:          []corev1.ContainerPort{{Name: "https", ContainerPort: webhookPort}},
						ReadinessProbe: probe("/readyz"),
						LivenessProbe:  probe("/healthz"),
						SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false),
							ReadOnlyRootFilesystem: ptr.To(true), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
					}},
				},
			},
		},
	}
}

// InstallWebhook runs the webhook and waits until the API server injects
// through it (a server-side dry run of an annotated pod).
func (c *Cluster) InstallWebhook(ctx context.Context) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	sa, cr, crb, role, rb := webhookRBAC()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: WebhookName, Namespace: MeshletNamespace},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": WebhookName},
			Ports: []corev1.ServicePort{{Name: "https", Port: 443, TargetPort: intstr.FromInt32(webhookPort)}}}}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MeshletNamespace}}
	creates := []func() error{
		func() error { _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); return err },
		func() error {
			_, err := cs.CoreV1().ServiceAccounts(MeshletNamespace).Create(ctx, sa, metav1.CreateOptions{})
			return err
		},
		func() error { _, err := cs.RbacV1().ClusterRoles().Create(ctx, cr, metav1.CreateOptions{}); return err },
		func() error {
			_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.RbacV1().Roles(MeshletNamespace).Create(ctx, role, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.RbacV1().RoleBindings(MeshletNamespace).Create(ctx, rb, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.CoreV1().Services(MeshletNamespace).Create(ctx, svc, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, WebhookConfiguration(), metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := cs.AppsV1().Deployments(MeshletNamespace).Create(ctx, webhookDeployment(), metav1.CreateOptions{})
			return err
		},
	}
	for _, create := range creates {
		if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("install the webhook: %w", err)
		}
	}
	return c.waitFor(ctx, "the webhook to inject", func(ctx context.Context) error { return WebhookInjects(ctx, cs) })
}

// WebhookInjects dry-runs the creation of an annotated pod in the default
// namespace and checks the API server returns it injected.
func WebhookInjects(ctx context.Context, cs kubernetes.Interface) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "webhook-probe-", Annotations: map[string]string{annotations.Inject: "true"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: StaticServerImage,
			Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
	}
	got, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return err
	}
	if got.Annotations[annotations.InjectStatus] != annotations.Injected {
		return errors.New("the API server admitted an annotated pod without injecting it")
	}
	return nil
}
