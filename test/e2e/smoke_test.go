package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/coreos/go-iptables/iptables"

	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// TestClusterSmoke: Deployments, Services, exec and Consul work on the
// cluster, the ground every other e2e test stands on.
func TestClusterSmoke(t *testing.T) {
	requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := clientset(t)
	ns := testNamespace(t, cs, "smoke")

	labels := map[string]string{"app": "static-server"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "static-server"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](1),
					Containers: []corev1.Container{{
						Name: "static-server", Image: suite.Images.StaticServer, ImagePullPolicy: pullPolicy(),
						Args:  []string{`-text="hello world"`, "-listen=:8080"},
						Ports: []corev1.ContainerPort{{ContainerPort: 8080, Name: "http"}},
					}},
				},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "static-server"},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	createPod(t, cs, ns, "static-client", nil, corev1.Container{
		Name: "static-client", Image: suite.Images.StaticClient, ImagePullPolicy: pullPolicy(),
		Command: []string{"/bin/sh", "-c", "--"}, Args: []string{"while true; do sleep 30; done"},
	})

	waitFor(t, ctx, "2 available static-server replicas", func(ctx context.Context) (bool, error) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "static-server", metav1.GetOptions{})
		return err == nil && d.Status.AvailableReplicas == 2, err
	})
	waitPodRunning(t, ctx, cs, ns, "static-client")

	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=static-server"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 2 {
		t.Fatalf("%d static-server pods, want 2", len(pods.Items))
	}
	if lc != nil {
		// As a Docker engine leaves the host: pod-to-pod and
		// pod-to-Service traffic crosses the host's FORWARD chain.
		forwardPolicyDrop(t)
	}
	for _, p := range pods.Items {
		out := kubectl(t, "exec", "-n", ns, "static-client", "--", "curl", "-sS", "-m", "5", fmt.Sprintf("http://%s:8080/", p.Status.PodIP))
		if !strings.Contains(out, "hello world") {
			t.Errorf("pod %s (%s) answered %q, want hello world", p.Name, p.Status.PodIP, out)
		}
	}
	// Through the ClusterIP: kube-proxy works for pods.
	var out string
	waitFor(t, ctx, "the Service to answer", func(context.Context) (bool, error) {
		out, _ = kubectlErr("exec", "-n", ns, "static-client", "--", "curl", "-sS", "-m", "3", "http://"+svc.Spec.ClusterIP+"/")
		return strings.Contains(out, "hello world"), nil
	})

	// The Consul catalog holds the server and the node's client agent.
	cl := consul(t)
	nodes, _, err := cl.Catalog().Nodes(nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range nodes {
		names = append(names, n.Node)
	}
	if lc != nil {
		if len(names) != 2 || !slices.Contains(names, cluster.NodeName) || !slices.Contains(names, "consul-server") {
			t.Errorf("consul catalog nodes %v, want the server and %s", names, cluster.NodeName)
		}
		return
	}
	// Elsewhere the nodes are the cluster's own: the Consul agent's node must be
	// among them, with a server beside it.
	self, err := cl.Agent().NodeName()
	if err != nil || !slices.Contains(names, self) || len(names) < 2 {
		t.Errorf("consul catalog nodes %v, want the agent's node %q (%v) and a server", names, self, err)
	}
}

// forwardPolicyDrop sets the host's filter FORWARD policy to DROP in both
// IP families for the rest of the test, as a Docker engine sets it when it
// starts, and puts back the policy it found.
func forwardPolicyDrop(t *testing.T) {
	t.Helper()
	for _, fam := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.NewWithProtocol(fam)
		if err != nil {
			t.Fatal(err)
		}
		rules, err := ipt.List("filter", "FORWARD")
		if err != nil {
			t.Fatal(err)
		}
		before := ""
		if len(rules) > 0 {
			if f := strings.Fields(rules[0]); len(f) == 3 && f[0] == "-P" {
				before = f[2]
			}
		}
		if before == "" {
			t.Fatalf("FORWARD's policy not found in %q", rules)
		}
		if err := ipt.ChangePolicy("filter", "FORWARD", "DROP"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := ipt.ChangePolicy("filter", "FORWARD", before); err != nil {
				t.Errorf("restore FORWARD policy %s: %v", before, err)
			}
		})
	}
}
