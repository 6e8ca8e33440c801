package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/webhook"
)

// proxyCheck runs in the app's pod as an ordinary container: it exits 1
// unless the proxy's public listener (on the pod IP) already accepts
// connections when it starts (curl reaches the TLS listener and gets no
// HTTP answer: 52 or 56; 7 is "refused": the proxy was not up).
const proxyCheck = `curl -s -m 2 http://$POD_IP:20000/; rc=$?; echo "proxy check: curl exit $rc"; ` +
	`[ $rc = 52 ] || [ $rc = 56 ] || exit 1; exec sleep 3600`

// TestWebhookMeshletDataPlane: a pod injected with the local cluster's
// data plane (meshlet) runs; its sidecar is up before the app's
// containers start; the node agent registers it; its proxy's health
// follows the service's check; and Consul's own built-in proxy, as a
// Connect client on the host, reaches the app through it with mTLS (the
// two data planes interoperate).
func TestWebhookMeshletDataPlane(t *testing.T) {
	requireDataPlane(t, webhook.DataPlaneMeshlet)
	requireLocalNode(t, "Consul's proxy on the test's host dials the pod's IP")
	cs := clientset(t)
	ns := testNamespace(t, cs, "dataplane")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const svc = "e2e-web"
	web := echoContainer("web", "hello world", 8080, 0)
	web.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Annotations: map[string]string{
			contract.Inject: "true", contract.Service: svc}},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1), Containers: []corev1.Container{
			web,
			{Name: "proxy-check", Image: suite.Images.StaticClient, ImagePullPolicy: pullPolicy(),
				Command: []string{"sh", "-c", proxyCheck},
				Env: []corev1.EnvVar{{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{
					FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}}},
		}},
	}
	created := createPodSpec(t, cs, ns, pod)
	checkPlacement(t, created)
	reg, err := contract.DecodeRegistration(created.Annotations[contract.RegistrationKey])
	if err != nil {
		t.Fatalf("the webhook's registration annotation: %v", err)
	}
	if reg.Service != svc || reg.Port != 8080 || reg.DataPlane != webhook.DataPlaneMeshlet {
		t.Fatalf("registration %+v: want service %s, port 8080, data plane meshlet", reg, svc)
	}

	var withIP *corev1.Pod
	waitFor(t, ctx, "the pod's IP", func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
		withIP = p
		return err == nil && p.Status.PodIP != "", err
	})
	cl := consul(t)
	// The node agent registers the pod once it has an IP.
	waitFor(t, ctx, "the agent's registration", func(context.Context) (bool, error) {
		err := catalogMatches(cl, ns, svc, map[string]string{"web": withIP.Status.PodIP})
		return err == nil, err
	})
	checkID := contract.ServiceID(ns, "web") + contract.HealthCheckSuffix

	var running *corev1.Pod
	waitFor(t, ctx, "every container ready", func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		running = p
		for _, c := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if !c.Ready {
				return false, fmt.Errorf("container %s not ready: %+v", c.Name, c.State)
			}
		}
		return len(p.Status.ContainerStatuses) == len(created.Spec.Containers), nil
	})
	for _, c := range running.Status.ContainerStatuses {
		if c.RestartCount != 0 {
			t.Errorf("container %s restarted %d times: it started before the sidecar was up", c.Name, c.RestartCount)
		}
	}
	if log := kubectl(t, "logs", "-n", ns, "web", "-c", "proxy-check"); !strings.Contains(log, "curl exit 52") && !strings.Contains(log, "curl exit 56") {
		t.Fatalf("proxy-check log %q: want the proxy's listener answering before the app started", log)
	}

	// The proxy's health follows the service's readiness check (an alias
	// check): unready, Consul offers no instance to Connect clients.
	if err := cl.Agent().UpdateTTL(checkID, "pod not ready", capi.HealthCritical); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the proxy to follow its service to critical", func(context.Context) (bool, error) {
		return passingProxies(t, cl, svc) == 0, nil
	})
	if err := cl.Agent().UpdateTTL(checkID, "pod ready", capi.HealthPassing); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the proxy to follow its service to passing", func(context.Context) (bool, error) {
		return passingProxies(t, cl, svc) == 1, nil
	})

	// A Connect client on the host, Consul's built-in proxy, dials the
	// pod's sidecar with mTLS; the sidecar hands the connection to the app.
	port := freeLoopbackPort(t)
	startHostProcess(t, tools.consul, "connect", "proxy", "-http-addr", suite.ConsulAddr,
		"-service", "e2e-client", "-upstream", fmt.Sprintf("%s:%d", svc, port))
	var body string
	waitFor(t, ctx, "hello world through the mesh", func(ctx context.Context) (bool, error) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		body = string(b)
		return err == nil && strings.Contains(body, "hello world"), err
	})
}

func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
