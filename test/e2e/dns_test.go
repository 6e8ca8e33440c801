package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// TestDNS: pods resolve Services through the cluster DNS, CoreDNS behind
// kube-dns at cluster.ClusterDNS, the nameserver kubelet gives every pod.
// A name outside cluster.local is refused by CoreDNS itself, at once: it
// forwards nothing, so no query for it leaves the machine.
func TestDNS(t *testing.T) {
	requireLocalNode(t, "checks the local cluster's own cluster DNS: its addresses, and REFUSED for names it does not serve")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := clientset(t)
	ns := testNamespace(t, cs, "dns")

	labels := map[string]string{"app": "echo"}
	createPodSpec(t, cs, ns, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Labels: labels},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{echoContainer("echo", "hello from echo", 8080, 0)}},
	})
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	createPod(t, cs, ns, "client", nil, shellContainer())
	waitPodRunning(t, ctx, cs, ns, "echo")
	waitPodRunning(t, ctx, cs, ns, "client")
	fqdn := "echo." + ns + ".svc." + cluster.ClusterZone

	t.Run("kube-dns", func(t *testing.T) {
		dns, err := cs.CoreV1().Services(cluster.DNSNamespace).Get(ctx, cluster.DNSService, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if dns.Spec.ClusterIP != cluster.ClusterDNS {
			t.Errorf("kube-dns ClusterIP %s, want %s", dns.Spec.ClusterIP, cluster.ClusterDNS)
		}
		conf := kubectl(t, "exec", "-n", ns, "client", "--", "cat", "/etc/resolv.conf")
		for _, want := range []string{"nameserver " + cluster.ClusterDNS + "\n",
			"search " + ns + ".svc.cluster.local svc.cluster.local cluster.local\n"} {
			if !strings.Contains(conf, want) {
				t.Errorf("pod resolv.conf lacks %q:\n%s", want, conf)
			}
		}
	})
	// busybox nslookup tries the search list only for a name without a
	// dot (it has no ndots); the app subtest below covers "echo.<ns>".
	api := "kubernetes.default.svc." + cluster.ClusterZone
	for _, tc := range []struct{ name, query, wantName, wantIP string }{
		{"short name", "echo", fqdn, svc.Spec.ClusterIP},
		{"fully qualified", fqdn, fqdn, svc.Spec.ClusterIP},
		{"fully qualified, absolute", fqdn + ".", fqdn, svc.Spec.ClusterIP},
		{"another namespace", api, api, cluster.APIServerIP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _ := kubectlErr("exec", "-n", ns, "client", "--", "nslookup", "-type=a", tc.query)
			names, addrs := parseNslookup(out)
			if !slices.Equal(addrs, []string{tc.wantIP}) || !slices.Equal(names, []string{tc.wantName}) {
				t.Errorf("nslookup %s: names %v, addresses %v; want %s at %s\n%s", tc.query, names, addrs, tc.wantName, tc.wantIP, out)
			}
		})
	}
	t.Run("reverse", func(t *testing.T) {
		out, _ := kubectlErr("exec", "-n", ns, "client", "--", "nslookup", svc.Spec.ClusterIP)
		if !strings.Contains(out, "name = "+fqdn+"\n") {
			t.Errorf("nslookup %s does not name %s:\n%s", svc.Spec.ClusterIP, fqdn, out)
		}
	})
	// An application's own resolver (the curl-compatible client is Go's:
	// search list, ndots:5) reaches the Service by its short names.
	for _, host := range []string{"echo", "echo." + ns} {
		t.Run("app via "+host, func(t *testing.T) {
			// Bounded: only kube-proxy's rules for the new Service may lag.
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			waitFor(t, ctx, "the Service to answer at http://"+host+"/", func(context.Context) (bool, error) {
				out, _ := kubectlErr("exec", "-n", ns, "client", "--", "curl", "-sS", "-m", "3", "http://"+host+"/")
				return strings.Contains(out, "hello from echo"), nil
			})
		})
	}
	// REFUSED comes from CoreDNS alone (no server block for the zone); a
	// forward would answer SERVFAIL here (no route off the node) or after
	// its timeout, and NXDOMAIN would mean something answered for the name.
	t.Run("outside cluster.local", func(t *testing.T) {
		t0 := time.Now()
		out, err := kubectlErr("exec", "-n", ns, "client", "--", "nslookup", "-type=a", "example.com")
		took := time.Since(t0)
		names, addrs := parseNslookup(out)
		if err == nil || !strings.Contains(out, "example.com: REFUSED") || len(names)+len(addrs) > 0 {
			t.Errorf("nslookup example.com: err %v, want REFUSED and no answer:\n%s", err, out)
		}
		if took > 3*time.Second {
			t.Errorf("nslookup example.com took %s, want an answer at once", took)
		}
		t0 = time.Now()
		out, err = kubectlErr("exec", "-n", ns, "client", "--", "curl", "-sS", "-m", "10", "http://example.com/")
		took = time.Since(t0)
		if err == nil || !strings.Contains(err.Error(), "exit status 6") {
			t.Errorf("curl http://example.com/: %v, want exit status 6 (could not resolve):\n%s", err, out)
		}
		if took > 3*time.Second {
			t.Errorf("curl http://example.com/ took %s to fail, want at once", took)
		}
	})
}

// parseNslookup returns the names and addresses busybox nslookup printed
// as answers ("Name:\tX" then "Address: Y"), leaving out the server's own
// "Address:\tIP:53" line.
func parseNslookup(out string) (names, addrs []string) {
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Name:"); ok {
			names = append(names, strings.TrimSpace(v))
		}
		if v, ok := strings.CutPrefix(line, "Address:"); ok && !strings.Contains(v, ":") {
			addrs = append(addrs, strings.TrimSpace(v))
		}
	}
	return names, addrs
}
