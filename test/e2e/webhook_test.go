package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// TestWebhookDecision: pods created through the real API server, with the
// real MutatingWebhookConfiguration, come out injected or not.
func TestWebhookDecision(t *testing.T) {
	requireCluster(t)
	cs := clientset(t)
	ns := testNamespace(t, cs, "webhook")
	on := map[string]string{contract.Inject: "true"}
	for _, tc := range []struct {
		name     string
		ns       string
		pod      *corev1.Pod
		injected bool
		check    func(*corev1.Pod) error
	}{
		{"annotated", ns, pausePod("annotated", on), true, nil},
		// The patch adds to lists the pod already has: the API server
		// must apply every kind of operation the webhook sends.
		{"env, init container, HTTP probe, upstreams", ns, pausePod("full", map[string]string{contract.Inject: "true",
			contract.Upstreams: "db:5432", "team": "a/b~c"}, func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: suite.Images.Pause, Env: []corev1.EnvVar{{Name: "A", Value: "1"}}}}
			c := &p.Spec.Containers[0]
			c.Env = []corev1.EnvVar{{Name: "B", Value: "2"}}
			c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8080)}}}
		}), true, func(p *corev1.Pod) error {
			ic, c := p.Spec.InitContainers, p.Spec.Containers[0]
			switch {
			case len(ic) != 2 || ic[1].Name != "init" || len(ic[1].Env) != 3 || ic[1].Env[1].Name != "DB_CONNECT_SERVICE_HOST":
				return fmt.Errorf("init containers: %+v", ic)
			case len(c.Env) != 3 || c.Env[0].Name != "B" || c.Env[2].Value != "5432":
				return fmt.Errorf("app env: %+v", c.Env)
			case c.ReadinessProbe.HTTPGet.Port.IntValue() != 20400:
				return fmt.Errorf("readiness probe not moved to the expose port: %+v", c.ReadinessProbe.HTTPGet)
			case p.Annotations["team"] != "a/b~c":
				return fmt.Errorf("the pod's own annotation changed: %v", p.Annotations)
			}
			return nil
		}},
		// Runs to completion: a native sidecar, whatever the data plane.
		{"restartPolicy Never", ns, pausePod("once", on, func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyNever }), true, nil},
		{"not annotated (connectInject.default false)", ns, pausePod("plain", nil), false, nil},
		{"opted out", ns, pausePod("opt-out", map[string]string{contract.Inject: "false"}), false, nil},
		{"host network", ns, pausePod("hostnet", on, func(p *corev1.Pod) { p.Spec.HostNetwork = true }), false, nil},
		{"labelled to skip the webhook", ns, pausePod("skip", on, func(p *corev1.Pod) { p.Labels = map[string]string{"meshlet.io/webhook": "skip"} }), false, nil},
		{"kube-system", "kube-system", pausePod("annotated", on), false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			opts := metav1.CreateOptions{}
			if tc.ns != ns { // nothing is left behind outside the test's namespace
				opts.DryRun = []string{metav1.DryRunAll}
			}
			got, err := cs.CoreV1().Pods(tc.ns).Create(ctx, tc.pod, opts)
			if err != nil {
				t.Fatal(err)
			}
			if injected(got) != tc.injected {
				t.Fatalf("injected = %v, want %v (annotations %v)", injected(got), tc.injected, got.Annotations)
			}
			if tc.injected {
				checkPlacement(t, got)
				if got.Annotations[contract.RedirectConfig] == "" || got.Annotations[contract.RegistrationKey] == "" {
					t.Fatalf("annotations for meshlet-cni and the agent missing: %v", got.Annotations)
				}
				if tc.check != nil {
					if err := tc.check(got); err != nil {
						t.Fatal(err)
					}
				}
			} else if len(got.Spec.InitContainers) != 0 || len(got.Spec.Containers) != len(tc.pod.Spec.Containers) {
				t.Fatalf("not injected, yet init containers %v, containers %v", containerNames(got.Spec.InitContainers), containerNames(got.Spec.Containers))
			}
		})
	}
}

// podManifest is a pod for kubectl with connect-inject and one more
// annotation line.
func podManifest(t *testing.T, ns, name, annotation string) string {
	return writeManifest(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  annotations:
    consul.hashicorp.com/connect-inject: "true"
    %s
spec:
  containers:
  - name: app
    image: %s
    imagePullPolicy: %s
`, name, ns, annotation, suite.Images.Pause, pullPolicy()))
}

// TestWebhookKubectl: what a user sees. A bad annotation is refused with a
// message naming it, an annotation meshlet does not implement is a
// warning, and a Deployment annotated on its template gets injected pods.
func TestWebhookKubectl(t *testing.T) {
	requireCluster(t)
	cs := clientset(t)
	ns := testNamespace(t, cs, "webhook-kubectl")

	bad := podManifest(t, ns, "bad", `consul.hashicorp.com/connect-service-upstreams: "db:abc"`)
	out, err := kubectlErr("apply", "-f", bad)
	want := `consul.hashicorp.com/connect-service-upstreams: "db:abc": port must be a number 1-65535`
	if err == nil || !strings.Contains(out, want) || !strings.Contains(out, "denied the request") {
		t.Fatalf("kubectl apply of a bad annotation: err %v, output:\n%s\nwant a denial with %q", err, out, want)
	}

	dep := writeManifest(t, fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: %[1]s
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        consul.hashicorp.com/connect-inject: "true"
        consul.hashicorp.com/sidecar-proxy-lifecycle-shutdown-grace-period-seconds: "5"
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: %[2]s
        imagePullPolicy: %[3]s
        ports: [{containerPort: 8080}]
`, ns, suite.Images.Pause, pullPolicy()))
	kubectl(t, "apply", "-f", dep)
	// The warning reaches whoever creates the pods: the ReplicaSet
	// controller records it in the API server's audit, kubectl only for
	// pods it creates itself; so check it on a pod kubectl creates.
	warnPod := podManifest(t, ns, "warned", `consul.hashicorp.com/sidecar-proxy-lifecycle-shutdown-grace-period-seconds: "5"`)
	out = kubectl(t, "apply", "-f", warnPod)
	if !strings.Contains(out, "Warning: annotation consul.hashicorp.com/sidecar-proxy-lifecycle-shutdown-grace-period-seconds is not implemented by meshlet") {
		t.Fatalf("kubectl apply of an unimplemented annotation: want kubectl's Warning naming it, got:\n%s", out)
	}
	ctx := context.Background()
	waitFor(t, ctx, "2 pods of Deployment web", func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil || len(pods.Items) != 2 {
			return false, err
		}
		for _, p := range pods.Items {
			if !injected(&p) || sidecarPlacement(&p) != wantPlacement(&p) {
				return false, fmt.Errorf("pod %s not injected as expected (%s): %v", p.Name, sidecarPlacement(&p), p.Annotations)
			}
		}
		return true, nil
	})
}

// TestWebhookPodSecurity: an injected pod is admitted where Pod Security
// is enforced; the sidecar alone even meets "restricted".
func TestWebhookPodSecurity(t *testing.T) {
	requireCluster(t)
	cs := clientset(t)
	restrictedApp := func(p *corev1.Pod) {
		p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](1000),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
		p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false),
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	}
	for _, level := range []string{"baseline", "restricted"} {
		t.Run(level, func(t *testing.T) {
			ns := testNamespace(t, cs, "webhook-pss-"+level)
			labelNamespace(t, cs, ns, map[string]string{"pod-security.kubernetes.io/enforce": level})
			got, err := cs.CoreV1().Pods(ns).Create(context.Background(),
				pausePod("app", map[string]string{contract.Inject: "true"}, restrictedApp), metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("Pod Security %q refused an injected pod: %v", level, err)
			}
			if !injected(got) {
				t.Fatal("not injected")
			}
			// The check can fail: a privileged app is refused at this level.
			_, err = cs.CoreV1().Pods(ns).Create(context.Background(), pausePod("privileged", map[string]string{contract.Inject: "true"},
				func(p *corev1.Pod) {
					p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
				}),
				metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err == nil || !strings.Contains(err.Error(), "violates PodSecurity") {
				t.Fatalf("a privileged pod under %q: %v, want a PodSecurity refusal", level, err)
			}
		})
	}
}

func labelNamespace(t *testing.T, cs kubernetes.Interface, ns string, labels map[string]string) {
	t.Helper()
	n, err := cs.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range labels {
		n.Labels[k] = v
	}
	if _, err := cs.CoreV1().Namespaces().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestWebhookDownFailsClosed: with no webhook replica, a pod in a meshed
// namespace is refused (it would otherwise run without its proxy), while
// kube-system and pods labelled to skip the webhook are still admitted.
func TestWebhookDownFailsClosed(t *testing.T) {
	requireCluster(t)
	cs := clientset(t)
	ns := testNamespace(t, cs, "webhook-down")
	ctx := context.Background()
	replicas := scaleWebhook(t, cs, 0)
	t.Cleanup(func() {
		scaleWebhook(t, cs, replicas)
		waitFor(t, ctx, "the webhook to inject again", func(ctx context.Context) (bool, error) {
			return cluster.WebhookInjects(ctx, cs) == nil, nil
		})
	})
	waitFor(t, ctx, "the webhook's pods to be gone", func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(suite.MeshletNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + cluster.WebhookName})
		return err == nil && len(pods.Items) == 0, err
	})
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	_, err := cs.CoreV1().Pods(ns).Create(ctx, pausePod("app", map[string]string{contract.Inject: "true"}), dry)
	if err == nil || !strings.Contains(err.Error(), "inject.meshlet.io") {
		t.Fatalf("webhook down: creating an annotated pod returned %v, want a refusal naming the webhook", err)
	}
	if _, err := cs.CoreV1().Pods("kube-system").Create(ctx, pausePod("app", nil), dry); err != nil {
		t.Fatalf("webhook down: kube-system must still admit pods: %v", err)
	}
	skip := pausePod("skip", nil, func(p *corev1.Pod) { p.Labels = map[string]string{"meshlet.io/webhook": "skip"} })
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, skip, dry); err != nil {
		t.Fatalf("webhook down: a pod labelled meshlet.io/webhook=skip must be admitted: %v", err)
	}
}

// scaleWebhook sets the webhook's replicas to n and returns how many it
// had, for the cleanup to restore.
func scaleWebhook(t *testing.T, cs kubernetes.Interface, n int32) int32 {
	t.Helper()
	ctx := context.Background()
	s, err := cs.AppsV1().Deployments(suite.MeshletNamespace).GetScale(ctx, cluster.WebhookName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	was := s.Spec.Replicas
	s.Spec.Replicas = n
	if _, err := cs.AppsV1().Deployments(suite.MeshletNamespace).UpdateScale(ctx, cluster.WebhookName, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return was
}
