package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// TestConsulDNSRedirection: with consul-k8s' dns.enableRedirection (helm
// upgrade --set dns.enableRedirection=true), an injected pod resolves
// static-server.service.consul through the node's Consul client agent
// (behind Service consul/consul-dns, whose ClusterIP the webhook wrote
// into the pod's redirect config) to the server pod's address, and still
// resolves the cluster's names, which the agent recurses to CoreDNS. A pod
// annotated consul.hashicorp.com/consul-dns: "false" keeps the cluster DNS,
// which refuses Consul's names; a pod without transparent proxy is warned
// at admission that the default does not apply to it.
func TestConsulDNSRedirection(t *testing.T) {
	requireLocalNode(t, "needs the local cluster's Consul DNS Service (consul/consul-dns) and its Consul agent recursing to the cluster DNS")
	if suite.ACLs() {
		t.Skip("needs Consul DNS answering anonymous queries: the secure cluster's agents have no DNS token (docs/local-cluster.md)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cs := clientset(t)
	cl := consul(t)
	dnsSvc, err := cs.CoreV1().Services(cluster.ConsulNamespace).Get(ctx, cluster.ConsulDNSService, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	upgradeRelease(t, ctx, cs, "dns.enableRedirection=true")
	ns := testNamespace(t, cs, "consul-dns")
	leaveNoRegistrations(t, cs, cl, ns)

	labels := map[string]string{"app": "static-server"}
	app := echoContainer("static-server", "hello world", 8080, 0)
	app.Ports = []corev1.ContainerPort{{ContainerPort: 8080}} // the service's port, behind the proxy
	createPodSpec(t, cs, ns, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "static-server", Labels: labels, Annotations: map[string]string{contract.Inject: "true"}},
		Spec:       corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1), Containers: []corev1.Container{app}},
	})
	if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "static-server"},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	shell := shellContainer()
	shell.Name = "static-client" // where curlIn runs curl
	client := createPod(t, cs, ns, "client", map[string]string{contract.Inject: "true"}, shell)
	optOut := createPod(t, cs, ns, "cluster-dns-only", map[string]string{contract.Inject: "true", contract.ConsulDNS: "false"}, shellContainer())

	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, pod := range []string{"static-server", "client"} {
			out, _ := kubectlErr("logs", "-n", ns, pod, "-c", sidecarName(), "--tail", "40")
			t.Logf("%s's %s:\n%s", pod, sidecarName(), out)
		}
	})
	// The redirect configs as the webhook wrote them: the Service's
	// ClusterIP without a port (every query) on the one, none on the other.
	for _, tc := range []struct {
		pod  *corev1.Pod
		want string
	}{{client, dnsSvc.Spec.ClusterIP}, {optOut, ""}} {
		c, err := iptables.ParseConfig(tc.pod.Annotations[contract.RedirectConfig])
		if err != nil {
			t.Fatalf("pod %s: %v", tc.pod.Name, err)
		}
		if c.ConsulDNSIP != tc.want || c.ConsulDNSPort != 0 {
			t.Errorf("pod %s: ConsulDNSIP %q port %d, want %q and no port", tc.pod.Name, c.ConsulDNSIP, c.ConsulDNSPort, tc.want)
		}
	}
	server := waitPodState(t, ctx, cs, ns, "static-server", "Ready", podReady)
	waitPodRunning(t, ctx, cs, ns, "client")
	waitPodRunning(t, ctx, cs, ns, "cluster-dns-only")
	waitFor(t, ctx, "static-server passing in Consul", func(context.Context) (bool, error) {
		entries, _, err := cl.Health().Service("static-server", "", true, nil)
		return err == nil && len(entries) == 1 && entries[0].Service.Address == server.Status.PodIP, fmt.Errorf("%d passing, %v", len(entries), err)
	})

	lookup := func(pod, name string) (names, addrs []string, out string) {
		out, _ = kubectlErr("exec", "-n", ns, pod, "--", "nslookup", "-type=a", name)
		names, addrs = parseNslookup(out)
		return names, addrs, out
	}
	consulName := "static-server.service.consul"
	t.Run("Consul's name through Consul", func(t *testing.T) {
		// Consul's DNS answers from the catalog as soon as the instance
		// passes; the wait covers only kube-proxy's rules for the pod.
		waitFor(t, ctx, consulName+" from the client", func(context.Context) (bool, error) {
			names, addrs, out := lookup("client", consulName)
			return slices.Equal(names, []string{consulName}) && slices.Equal(addrs, []string{server.Status.PodIP}), fmt.Errorf("%s", out)
		})
	})
	fqdn := "static-server." + ns + ".svc." + cluster.ClusterZone
	svc, err := cs.CoreV1().Services(ns).Get(ctx, "static-server", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	api := "kubernetes.default.svc." + cluster.ClusterZone
	for _, tc := range []struct{ name, query, wantName, wantIP string }{
		{"the API server's name, recursed", api, api, cluster.APIServerIP},
		{"a Service's short name, recursed through the search list", "static-server", fqdn, svc.Spec.ClusterIP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			names, addrs, out := lookup("client", tc.query)
			if !slices.Equal(names, []string{tc.wantName}) || !slices.Equal(addrs, []string{tc.wantIP}) {
				t.Errorf("nslookup %s: names %v, addresses %v; want %s at %s\n%s", tc.query, names, addrs, tc.wantName, tc.wantIP, out)
			}
		})
	}
	t.Run("an application's resolver", func(t *testing.T) {
		// Go's (the curl-compatible client's): search list, ndots:5, A and
		// AAAA. The Service's short name reaches the app through the mesh
		// (its ClusterIP), and so does Consul's name (the instance's
		// address, which the proxy takes to that instance).
		waitCurl(t, ctx, "the server by its Service's short name", ns, "client", "http://static-server/", "hello world")
		waitCurl(t, ctx, "the server by its Consul name", ns, "client", "http://"+consulName+":8080/", "hello world")
	})
	t.Run("opted out: the cluster DNS", func(t *testing.T) {
		names, addrs, out := lookup("cluster-dns-only", consulName)
		if len(names)+len(addrs) > 0 || !strings.Contains(out, consulName+": REFUSED") {
			t.Errorf("nslookup %s in the opted-out pod: names %v, addresses %v; want CoreDNS's REFUSED\n%s", consulName, names, addrs, out)
		}
		names, addrs, out = lookup("cluster-dns-only", api)
		if !slices.Equal(addrs, []string{cluster.APIServerIP}) {
			t.Errorf("nslookup %s in the opted-out pod: names %v, addresses %v\n%s", api, names, addrs, out)
		}
	})
	t.Run("transparent proxy off: warned", func(t *testing.T) {
		out := kubectl(t, "run", "-n", ns, "no-tproxy", "--image", suite.Images.Pause, "--restart=Never", "--dry-run=server",
			"--annotations", contract.Inject+"=true", "--annotations", contract.TransparentProxy+"=false")
		if !strings.Contains(out, "Warning: Consul DNS redirection (the default, dns.enableRedirection) does not apply to this pod") {
			t.Errorf("kubectl run with transparent proxy off: no warning about Consul DNS:\n%s", out)
		}
	})
}
