package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/webhook"
)

// TestStatefulSetByPodName: a 2-replica StatefulSet behind a headless
// Service (no virtual IP), each replica answering its own name. A meshed
// client reaching web-0.web and web-1.web (pod IPs) through transparent
// proxy gets that very replica, through the mesh: a deny intention makes
// the next request to either fail, its deletion brings them back.
func TestStatefulSetByPodName(t *testing.T) {
	requireDataPlane(t, webhook.DataPlaneMeshlet)
	cs := clientset(t)
	cl := consul(t)
	ns := testNamespace(t, cs, "sts")
	leaveNoRegistrations(t, cs, cl, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	labels := map[string]string{"app": "web"}
	createService(t, ctx, cs, ns, "web", corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: labels,
		Ports: []corev1.ServicePort{{Port: 8080}}})
	app := corev1.Container{Name: "web", Image: suite.Images.StaticServer, ImagePullPolicy: pullPolicy(),
		Args:  []string{"-text=$(POD_NAME)", "-listen=:8080"},
		Env:   []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}
	if _, err := cs.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.StatefulSetSpec{Replicas: ptr.To[int32](2), ServiceName: "web", Selector: &metav1.LabelSelector{MatchLabels: labels},
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{contract.Inject: "true"}},
				Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1), Containers: []corev1.Container{app}}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	meshedClient(t, ctx, cs, ns)
	for _, p := range []string{"web-0", "web-1"} {
		waitPodState(t, ctx, cs, ns, p, "Ready", podReady)
	}
	curl := func(replica string) (string, error) {
		return kubectlErr("exec", "-n", ns, "static-client", "--", "curl", "-s", "-m", "5", "http://"+replica+".web:8080/")
	}
	reachEach := func(what string) {
		t.Helper()
		for _, r := range []string{"web-0", "web-1"} {
			waitFor(t, ctx, what+": "+r+".web answers as "+r, func(context.Context) (bool, error) {
				out, err := curl(r)
				return err == nil && strings.TrimSpace(out) == r, fmt.Errorf("%q, %v", out, err)
			})
		}
	}
	reachEach("through the mesh")
	t.Cleanup(func() { _, _ = consulCLI("intention", "delete", "static-client", "web") })
	if out, err := consulCLI("intention", "create", "-deny", "static-client", "web"); err != nil {
		t.Fatalf("consul intention create -deny: %v: %s", err, out)
	}
	for _, r := range []string{"web-0", "web-1"} {
		// meshlet's proxy asks the Consul agent at each connection.
		if out, err := curl(r); err == nil || !strings.Contains(out, "command terminated with exit code 52") {
			t.Errorf("%s.web after the deny: %q, %v; want curl's exit code 52", r, out, err)
		}
	}
	if out, err := consulCLI("intention", "delete", "static-client", "web"); err != nil {
		t.Fatalf("consul intention delete: %v: %s", err, out)
	}
	reachEach("after the intention's deletion")
}

// TestDaemonSetMeshed: a DaemonSet's pods are injected and registered like
// a Deployment's, under the Service that selects them, and a meshed client
// reaches them through that Service.
func TestDaemonSetMeshed(t *testing.T) {
	requireDataPlane(t, webhook.DataPlaneMeshlet, webhook.DataPlaneEnvoy)
	cs := clientset(t)
	cl := consul(t)
	ns := testNamespace(t, cs, "ds")
	leaveNoRegistrations(t, cs, cl, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	labels := map[string]string{"app": "node-echo"}
	createService(t, ctx, cs, ns, "node-echo", corev1.ServiceSpec{Selector: labels,
		Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}})
	app := echoContainer("node-echo", "hello from the daemonset", 8080, 0)
	app.Ports = []corev1.ContainerPort{{ContainerPort: 8080}}
	if _, err := cs.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "node-echo"},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{contract.Inject: "true"}},
				Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1), Containers: []corev1.Container{app}}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	meshedClient(t, ctx, cs, ns)
	// One pod per schedulable node: one on the local cluster, one per
	// worker on kind; each is registered, each on its own node's agent.
	want := map[string]string{}
	waitFor(t, ctx, "the DaemonSet's pods Ready", func(ctx context.Context) (bool, error) {
		ds, err := cs.AppsV1().DaemonSets(ns).Get(ctx, "node-echo", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=node-echo"})
		if err != nil {
			return false, err
		}
		clear(want)
		for i := range pods.Items {
			pod := &pods.Items[i]
			if !injected(pod) || !podReady(pod) {
				return false, fmt.Errorf("pod %s: injected %v, ready %v", pod.Name, injected(pod), podReady(pod))
			}
			want[pod.Name] = pod.Status.PodIP
		}
		n := int(ds.Status.DesiredNumberScheduled)
		return n > 0 && len(want) == n, fmt.Errorf("%d of %d pods injected and Ready", len(want), n)
	})
	waitFor(t, ctx, "node-echo and its proxy in the catalog at each pod's IP", func(context.Context) (bool, error) {
		err := catalogMatches(cl, ns, "node-echo", want)
		return err == nil, err
	})
	waitCurl(t, ctx, "the DaemonSet's pod through the mesh", ns, "pod/static-client", "http://node-echo/", "hello from the daemonset")
}

// meshedClient creates the meshed pod static-client (a shell with curl;
// its Consul service static-client, named after its container) in ns and
// waits for it to be Ready.
func meshedClient(t *testing.T, ctx context.Context, cs *kubernetes.Clientset, ns string) {
	t.Helper()
	client := shellContainer()
	client.Name = "static-client"
	createPod(t, cs, ns, "static-client", map[string]string{contract.Inject: "true"}, client)
	waitPodState(t, ctx, cs, ns, "static-client", "Ready", podReady)
}

// createService creates the Service name in ns.
func createService(t *testing.T, ctx context.Context, cs *kubernetes.Clientset, ns, name string, spec corev1.ServiceSpec) {
	t.Helper()
	if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
