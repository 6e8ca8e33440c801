package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/webhook"
)

// The tests of meshlet on a Consul with ACLs (default deny) and TLS only:
// hack/test.sh runs them, with TestSeedWalkthrough, on the local cluster
// booted with SECURE=1 (make cluster-up SECURE=1), and skips them in the
// open run. Each needs the suite's Consul to have ACLs.

func requireSecureConsul(t *testing.T) {
	t.Helper()
	requireCluster(t)
	if !suite.ACLs() || suite.ConsulCAFile == "" {
		t.Skip("needs Consul with ACLs and TLS: SECURE=1 (the local cluster) or -e2e.consul-token-file and -e2e.consul-ca-file")
	}
}

// TestSecureModeTLSOnly: the node's Consul client agent answers only over
// TLS, with a certificate the CA bundle given to meshlet verifies, and
// refuses anonymous requests; so the walkthrough's sidecars and node agent
// talked to it over TLS with tokens. The plain ports are closed.
func TestSecureModeTLSOnly(t *testing.T) {
	requireSecureConsul(t)
	requireLocalNode(t, "dials the Consul agent's plain ports on the node")
	for _, port := range []int{cluster.ConsulHTTPPort, cluster.ConsulGRPCPort} {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(cluster.NodeIP, strconv.Itoa(port)), 2*time.Second)
		if err == nil {
			conn.Close()
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("the Consul agent's plain port %d: %v, want connection refused", port, err)
		}
	}
	pem, err := os.ReadFile(suite.ConsulCAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", suite.ConsulCAFile)
	}
	for _, port := range []int{cluster.ConsulHTTPSPort, cluster.ConsulGRPCTLSPort} {
		addr := net.JoinHostPort(cluster.NodeIP, strconv.Itoa(port))
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
			&tls.Config{RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
		if err != nil {
			t.Errorf("TLS to %s, verified with the CA bundle: %v", addr, err)
			continue
		}
		conn.Close()
	}
	anon, err := capi.NewClient(&capi.Config{Address: strings.TrimPrefix(suite.ConsulAddr, "https://"), Scheme: "https",
		TLSConfig: capi.TLSConfig{CAFile: suite.ConsulCAFile}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anon.Agent().Self(); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("an anonymous /v1/agent/self: %v, want 403 (default deny)", err)
	}
	// The node agent was installed to reach the Consul agent over HTTPS
	// with its own token.
	cs := clientset(t)
	ds, err := cs.AppsV1().DaemonSets(suite.MeshletNamespace).Get(context.Background(), cluster.AgentName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(ds.Spec.Template.Spec.Containers[0].Args, " ")
	for _, want := range []string{"https://$(HOST_IP):8501", "-ca-file", "-token-file"} {
		if !strings.Contains(args, want) {
			t.Errorf("the node agent's arguments %q lack %q", args, want)
		}
	}
}

// TestSecureModeServiceAccountMismatch: with ACLs the webhook denies a pod
// whose Consul service is not named like its ServiceAccount, naming both
// (the seed's rule), and one running as "default".
func TestSecureModeServiceAccountMismatch(t *testing.T) {
	requireSecureConsul(t)
	cs := clientset(t)
	ns := testNamespace(t, cs, "acl-mismatch")
	createServiceAccount(t, cs, ns, "static-client")
	pod := pausePod("impostor", map[string]string{contract.Inject: "true", contract.Service: "static-server"}, func(p *corev1.Pod) {
		p.Spec.ServiceAccountName = "static-client"
	})
	_, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), `"static-server"`) || !strings.Contains(err.Error(), `"static-client"`) {
		t.Errorf("a pod of ServiceAccount static-client annotated %s: static-server: %v; want a denial naming both", contract.Service, err)
	}
	def := pausePod("anonymous", map[string]string{contract.Inject: "true", contract.Service: "web"})
	_, err = cs.CoreV1().Pods(ns).Create(context.Background(), def, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), `ServiceAccount "default"`) {
		t.Errorf("a pod of ServiceAccount default: %v; want a denial naming it", err)
	}
}

// TestSecureModeImpersonation: a pod of ServiceAccount imp-client that a
// Kubernetes Service named imp-server selects (the name the webhook cannot
// see) is admitted, but gets nothing of imp-server's: the node agent
// refuses to register it, with an Event naming both; its sidecar's login
// token holds the service identity imp-client alone; the catalog has no
// imp-server, and the pod's app is not served.
func TestSecureModeImpersonation(t *testing.T) {
	requireSecureConsul(t)
	cs := clientset(t)
	cl := consul(t)
	ns := testNamespace(t, cs, "acl-impersonate")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	createServiceAccount(t, cs, ns, "imp-client")
	if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "imp-server"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "imp"}, Ports: []corev1.ServicePort{{Port: 80}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := pausePod("impostor", map[string]string{contract.Inject: "true"}, func(p *corev1.Pod) {
		p.Labels = map[string]string{"app": "imp"}
		p.Spec.ServiceAccountName = "imp-client"
	})
	p := createPodSpec(t, cs, ns, pod)
	if !injected(p) {
		t.Fatalf("pod %s was not injected", p.Name)
	}
	waitPodEvent(t, ctx, cs, ns, p.Name, "MeshletRegistrationFailed", `"imp-server"`, `"imp-client"`)
	waitFor(t, ctx, "the sidecar's login token", func(ctx context.Context) (bool, error) {
		toks, err := cluster.PodLoginTokens(cl, ns)
		if err != nil {
			return false, err
		}
		tok, ok := toks[p.Name]
		if !ok {
			return false, fmt.Errorf("no token names pod %s/%s: %v", ns, p.Name, toks)
		}
		if !slices.Equal(tok.Services, []string{"imp-client"}) {
			t.Fatalf("the impostor's token grants the service identities %v, want [imp-client] alone", tok.Services)
		}
		return true, nil
	})
	for _, svc := range []string{"imp-server", "imp-server-sidecar-proxy", "imp-client"} {
		if entries, _, err := cl.Catalog().Service(svc, "", nil); err != nil || len(entries) != 0 {
			t.Errorf("the catalog's %s: %d instances (%v), want none", svc, len(entries), err)
		}
	}
	if p, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{}); err != nil || podReady(p) {
		t.Errorf("the impostor is ready (%v): its sidecar must not serve without a registration", err)
	}
}

// TestSecureModeTokensFollowPods: the auth method's tokens in Consul are
// the injected pods alive, through scale 1→3→1, pods deleted while the
// node agent is down, a force deletion, a killed sidecar and the
// namespace's deletion, within 10 s of each settling. A sidecar logs out
// as its pod stops, which needs no node agent; the token reaper takes
// what a logout cannot (the force deletion, the killed sidecar).
func TestSecureModeTokensFollowPods(t *testing.T) {
	requireSecureConsul(t)
	cs := clientset(t)
	cl := consul(t)
	ns := testNamespace(t, cs, "acl-tokens")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	kubectl(t, "apply", "-n", ns, "-f", writeManifest(t, fmt.Sprintf(tokenServer, suite.Images.StaticServer)))
	settle := func(what string, replicas int) {
		t.Helper()
		waitFor(t, ctx, what+": pods ready", func(ctx context.Context) (bool, error) {
			pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=tok-server"})
			if err != nil {
				return false, err
			}
			ready := 0
			for _, p := range pods.Items {
				if podReady(&p) && p.DeletionTimestamp == nil {
					ready++
				}
			}
			return ready == replicas && len(pods.Items) == replicas, fmt.Errorf("%d pods, %d ready, want %d", len(pods.Items), ready, replicas)
		})
		bounded, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		waitFor(t, bounded, what+": tokens equal the pods", func(ctx context.Context) (bool, error) {
			err := tokensMatchPods(ctx, cs, cl, ns)
			return err == nil, err
		})
	}
	settle("1 replica", 1)
	kubectl(t, "scale", "-n", ns, "deploy/tok-server", "--replicas=3")
	settle("scaled to 3", 3)
	kubectl(t, "scale", "-n", ns, "deploy/tok-server", "--replicas=1")
	settle("scaled to 1", 1)
	kubectl(t, "scale", "-n", ns, "deploy/tok-server", "--replicas=3")
	settle("scaled to 3 again", 3)
	restart := stopAgent(t, ctx, cs)
	kubectl(t, "scale", "-n", ns, "deploy/tok-server", "--replicas=1")
	waitFor(t, ctx, "2 pods gone while the node agent is down", func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=tok-server"})
		return err == nil && len(pods.Items) == 1, err
	})
	restart()
	settle("scaled to 1 with the node agent down", 1)
	// What a logout cannot cover, the token reaper must: a pod
	// force-deleted, and a sidecar killed (it logs in again as it
	// restarts, and its first token stays behind).
	kubectl(t, "scale", "-n", ns, "deploy/tok-server", "--replicas=2")
	settle("scaled to 2", 2)
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=tok-server"})
	if err != nil || len(pods.Items) != 2 {
		t.Fatalf("pods: %v, %d", err, len(pods.Items))
	}
	kubectl(t, "delete", "pod", "-n", ns, pods.Items[0].Name, "--grace-period=0", "--force")
	requireLocalNode(t, "kills a sidecar's process on the node")
	sidecar := pods.Items[1]
	for _, c := range append(sidecar.Status.InitContainerStatuses, sidecar.Status.ContainerStatuses...) {
		if c.Name == sidecarName() {
			if err := syscall.Kill(proxyPID(t, c.ContainerID), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitPodState(t, ctx, cs, ns, sidecar.Name, "its sidecar restarted", func(p *corev1.Pod) bool {
		for _, c := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if c.Name == sidecarName() {
				return c.RestartCount > 0 && c.Ready
			}
		}
		return false
	})
	settle("one pod force-deleted, the other's sidecar killed", 2)
	kubectl(t, "delete", "namespace", ns, "--wait=false")
	settle("the namespace deleted", 0)
}

const tokenServer = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: tok-server
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: tok-server
spec:
  replicas: 1
  selector:
    matchLabels:
      app: tok-server
  template:
    metadata:
      labels:
        app: tok-server
      annotations:
        consul.hashicorp.com/connect-inject: "true"
        consul.hashicorp.com/connect-service: tok-server
    spec:
      serviceAccountName: tok-server
      terminationGracePeriodSeconds: 5
      containers:
        - name: tok-server
          image: %s
          args: ["-text=hello world", "-listen=:8080"]
`

// tokensMatchPods: one token per pod of ns alive (not terminated), with
// the pod's UID, and none for a pod gone.
func tokensMatchPods(ctx context.Context, cs kubernetes.Interface, cl *capi.Client, ns string) error {
	toks, err := cluster.PodLoginTokens(cl, ns)
	if err != nil {
		return err
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var errs []error
	alive := map[string]bool{}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || !injected(&p) {
			continue
		}
		alive[p.Name] = true
		tok, ok := toks[p.Name]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("pod %s has no token", p.Name))
		case tok.UID != string(p.UID):
			errs = append(errs, fmt.Errorf("pod %s's token names UID %s, the pod's is %s", p.Name, tok.UID, p.UID))
		}
	}
	for name, tok := range toks {
		if !alive[name] {
			errs = append(errs, fmt.Errorf("token %s of pod %s, which is gone", tok.Accessor, name))
		}
	}
	return errors.Join(errs...)
}

func createServiceAccount(t testing.TB, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(context.Background(),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}, AutomountServiceAccountToken: ptr.To(true)},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestSecureModeFailedLogin: a sidecar whose login Consul refuses (here no
// binding rule matches its ServiceAccount) stays unready, serves nothing,
// and its pod gets an Event naming the cause; once a rule matches, the
// next login attempt succeeds and the pod turns ready, untouched.
func TestSecureModeFailedLogin(t *testing.T) {
	requireSecureConsul(t)
	cs := clientset(t)
	ns := testNamespace(t, cs, "acl-login")
	checkFailedLogin(t, cs, consul(t), ns, "no-binding")
}

// checkFailedLogin runs a pod of ServiceAccount sa whose login no binding
// rule matches, until its Event says so, then lets the rule match it and
// waits for the pod to turn ready, no container restarted.
func checkFailedLogin(t *testing.T, cs *kubernetes.Clientset, cl *capi.Client, ns, sa string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rule := bindingRule(t, cl)
	excluded := *rule
	excluded.Selector = rule.Selector + fmt.Sprintf(` and serviceaccount.name!=%q`, sa)
	if _, _, err := cl.ACL().BindingRuleUpdate(&excluded, nil); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if _, _, err := cl.ACL().BindingRuleUpdate(rule, nil); err != nil {
				t.Errorf("restore the binding rule: %v", err)
			}
		}
	}
	t.Cleanup(restore)
	createServiceAccount(t, cs, ns, sa)
	p := createPodSpec(t, cs, ns, pausePod(sa, map[string]string{contract.Inject: "true", contract.Service: sa},
		func(p *corev1.Pod) { p.Spec.ServiceAccountName = sa }))
	waitPodEvent(t, ctx, cs, ns, p.Name, "MeshletLoginFailed", cluster.AuthMethod, "Permission denied")
	if got, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{}); err != nil || podReady(got) {
		t.Fatalf("the pod is ready (%v) though its sidecar could not log in", err)
	}
	restore()
	got := waitPodState(t, ctx, cs, ns, p.Name, "Ready once a binding rule matches", podReady)
	for _, c := range append(got.Status.InitContainerStatuses, got.Status.ContainerStatuses...) {
		if c.RestartCount != 0 {
			t.Errorf("container %s restarted %d times: the sidecar must keep retrying, not exit", c.Name, c.RestartCount)
		}
	}
}

// waitPodEvent waits for an Event of reason on pod whose message says each
// of want, and logs it.
func waitPodEvent(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns, pod, reason string, want ...string) {
	t.Helper()
	waitFor(t, ctx, "an Event "+reason+" on "+pod, func(ctx context.Context) (bool, error) {
		evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
		if err != nil {
			return false, err
		}
	events:
		for _, e := range evs.Items {
			if e.Reason != reason {
				continue
			}
			for _, w := range want {
				if !strings.Contains(e.Message, w) {
					continue events
				}
			}
			t.Logf("Event %s: %s", reason, e.Message)
			return true, nil
		}
		return false, fmt.Errorf("%d events, none %s saying %q", len(evs.Items), reason, want)
	})
}

// bindingRule is the auth method's one binding rule.
func bindingRule(t *testing.T, cl *capi.Client) *capi.ACLBindingRule {
	t.Helper()
	rules, _, err := cl.ACL().BindingRuleList(cluster.AuthMethod, nil)
	if err != nil || len(rules) != 1 {
		t.Fatalf("binding rules of %s: %v, %d; want one", cluster.AuthMethod, err, len(rules))
	}
	return rules[0]
}

// TestSecureModeConsulDataPlane: data plane consul (Consul's built-in
// proxy, from the local cluster's consul image) on the secure cluster:
// each sidecar logs in as its pod's ServiceAccount, reaches the Consul
// agent over HTTPS with the CA, and a client's explicit upstream answers
// through the mesh; its token names its pod and goes when the pod does;
// a refused login is an Event on the pod.
func TestSecureModeConsulDataPlane(t *testing.T) {
	requireSecureConsul(t)
	requireLocalNode(t, "helm-upgrades the local release to data plane consul")
	cs := clientset(t)
	cl := consul(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	upgradeRelease(t, ctx, cs, "connectInject.dataPlane=consul", "global.image="+cluster.ConsulImage)
	ns := testNamespace(t, cs, "acl-consul")
	allowAllTo(t, "cdp-server")
	for _, sa := range []string{"cdp-server", "cdp-client"} {
		createServiceAccount(t, cs, ns, sa)
	}
	server := echoContainer("cdp-server", "hello from consul's proxy", 8080, 0)
	server.Ports = []corev1.ContainerPort{{ContainerPort: 8080}}
	pods := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Name: "cdp-server", Annotations: map[string]string{contract.Inject: "true", contract.Service: "cdp-server"}},
			Spec: corev1.PodSpec{ServiceAccountName: "cdp-server", TerminationGracePeriodSeconds: ptr.To[int64](5),
				Containers: []corev1.Container{server}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "cdp-client", Annotations: map[string]string{contract.Inject: "true",
			contract.Service: "cdp-client", contract.Upstreams: "cdp-server:1234"}},
			Spec: corev1.PodSpec{ServiceAccountName: "cdp-client", TerminationGracePeriodSeconds: ptr.To[int64](5),
				Containers: []corev1.Container{func() corev1.Container { c := shellContainer(); c.Name = "static-client"; return c }()}}},
	}
	for _, p := range pods {
		created := createPodSpec(t, cs, ns, p)
		if got := created.Spec.InitContainers; len(got) == 0 || got[0].Name != sidecarNames[webhook.DataPlaneConsul] {
			t.Fatalf("pod %s: no %s sidecar first in initContainers", p.Name, sidecarNames[webhook.DataPlaneConsul])
		}
		// Consul's built-in proxy has no transparent outbound listener:
		// the chart's defaults leave the pod unredirected, its upstreams
		// explicit.
		if v, ok := created.Annotations[contract.RedirectConfig]; ok {
			t.Errorf("pod %s has a redirect config %s with data plane consul: transparent proxy must be off", p.Name, v)
		}
	}
	for _, p := range pods {
		waitPodState(t, ctx, cs, ns, p.Name, "Ready", podReady)
	}
	waitCurl(t, ctx, "the upstream through Consul's proxies", ns, "pod/cdp-client", "http://localhost:1234/", "hello from consul's proxy")
	toks, err := cluster.PodLoginTokens(cl, ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if tok, ok := toks[p.Name]; !ok || !slices.Equal(tok.Services, []string{p.Spec.ServiceAccountName}) {
			t.Errorf("pod %s's login token: %+v (%v); want one with the service identity %s alone", p.Name, tok, ok, p.Spec.ServiceAccountName)
		}
	}
	for _, p := range pods {
		if err := cs.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, ctx, "the pods gone, and their tokens with them", func(ctx context.Context) (bool, error) {
		err := tokensMatchPods(ctx, cs, cl, ns)
		left, lerr := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && lerr == nil && len(left.Items) == 0, errors.Join(err, lerr)
	})
	// Its refused login is an Event too, reported by its script.
	checkFailedLogin(t, cs, cl, ns, "cdp-nobind")
}
