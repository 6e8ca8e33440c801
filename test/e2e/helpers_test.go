package e2e

// Helpers that tests in more than one file call. A helper one file uses
// stays in that file; a newcomer finds the shared vocabulary here, and
// what the suite runs against (the cluster, the flags) in env_test.go.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/daemon/install"
	"github.com/meshlet/meshlet/iptables"
	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/test/e2e/target"
)

// Kubernetes: clients, namespaces, waiting, kubectl.

// clientset is a client of the cluster the suite runs against.
func clientset(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	cs, err := target.Clientset(suite.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// testNamespace creates a namespace for one test and deletes it afterwards.
func testNamespace(t testing.TB, cs *kubernetes.Clientset, prefix string) string {
	t.Helper()
	ns, err := cs.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	// Pods need the namespace's default ServiceAccount.
	waitFor(t, context.Background(), "default ServiceAccount in "+ns.Name, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	return ns.Name
}

// waitFor polls cond until it holds and fails t if ctx, or waitFor's own
// limit, ends first. cond's last error goes into the failure, so a wait
// that gives up says what it last saw.
func waitFor(t testing.TB, ctx context.Context, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		ok, err := cond(ctx)
		last = err
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v (last error: %v)", what, err, last)
	}
}

// kubectlErr runs kubectl against the suite's cluster and returns its
// output, stdout and stderr together.
func kubectlErr(args ...string) (string, error) {
	cmd := exec.Command(tools.kubectl, append([]string{"--kubeconfig", suite.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// kubectl is kubectlErr for a command that must succeed: it fails t,
// with the output, otherwise.
func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := kubectlErr(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// writeManifest writes a YAML manifest for kubectl.
func writeManifest(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Pods: creating them and waiting for their state.

// createPod creates a pod with the given annotations and containers that
// stops within a second when deleted.
func createPod(t testing.TB, cs *kubernetes.Clientset, ns, name string, ann map[string]string, containers ...corev1.Container) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
		Spec:       corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1), Containers: containers},
	}
	return createPodSpec(t, cs, ns, pod)
}

// createPodSpec creates pod, as given, in namespace ns.
func createPodSpec(t testing.TB, cs *kubernetes.Clientset, ns string, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	created, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

// createPodObject creates a pod that no kubelet runs (its node does not
// exist): the plugin only needs the object.
func createPodObject(t testing.TB, cs *kubernetes.Clientset, ns, name string, ann map[string]string) {
	t.Helper()
	createPodSpec(t, cs, ns, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
		Spec:       corev1.PodSpec{NodeName: "no-such-node", Containers: []corev1.Container{echoContainer("app", "hi", 8080, 0)}},
	})
}

// echoContainer runs http-echo answering text on port, as uid when not 0.
func echoContainer(name, text string, port int, uid int64) corev1.Container {
	c := corev1.Container{Name: name, Image: suite.Images.StaticServer, ImagePullPolicy: pullPolicy(),
		Args: []string{"-text=" + text, fmt.Sprintf("-listen=:%d", port)}}
	if uid != 0 {
		c.SecurityContext = &corev1.SecurityContext{RunAsUser: ptr.To(uid)}
	}
	return c
}

// shellContainer idles, for kubectl exec.
func shellContainer() corev1.Container {
	return corev1.Container{Name: "client", Image: suite.Images.StaticClient, ImagePullPolicy: pullPolicy(),
		Command: []string{"sleep", "3600"}}
}

// pausePod is a pod whose one container does nothing, for admission tests.
func pausePod(name string, ann map[string]string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{Name: "app", Image: suite.Images.Pause, ImagePullPolicy: pullPolicy(),
				Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

// injected says whether the webhook injected p.
func injected(p *corev1.Pod) bool {
	return p.Annotations[contract.InjectStatus] == contract.Injected
}

// containerNames are the containers' names, for failure messages.
func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// container is p's container (not init container) named name.
func container(t *testing.T, p *corev1.Pod, name string) corev1.Container {
	t.Helper()
	for _, c := range p.Spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("pod %s has no container %s: %v", p.Name, name, containerNames(p.Spec.Containers))
	return corev1.Container{}
}

// podReady says whether the pod's Ready condition is true.
func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitPodRunning waits until the pod is Running and returns it.
func waitPodRunning(t *testing.T, ctx context.Context, cs *kubernetes.Clientset, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, ctx, "pod "+ns+"/"+name+" Running", func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		pod = p
		return err == nil && p.Status.Phase == corev1.PodRunning, err
	})
	return pod
}

// waitPodState waits until ok holds for the pod and returns it; what
// says what ok checks, for the failure message.
func waitPodState(t *testing.T, ctx context.Context, cs *kubernetes.Clientset, ns, name, what string, ok func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, ctx, "pod "+name+": "+what, func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod = p
		if !ok(p) {
			return false, fmt.Errorf("phase %s, containers %+v", p.Status.Phase, append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...))
		}
		return true, nil
	})
	return pod
}

// Traffic: curl in a pod, an HTTP GET from the node.

// curlIn runs the curl-compatible client of container static-client in
// a pod (as kubectl names it: deploy/x or pod/x) with a 5 s limit. When
// curl fails, kubectl says "command terminated with exit code N" and
// exits N itself.
func curlIn(ns, pod, url string) (string, error) {
	return kubectlErr("exec", "-n", ns, pod, "-c", "static-client", "--", "curl", "-s", "-m", "5", url)
}

// waitCurl waits until curl in the pod answers with want.
func waitCurl(t *testing.T, ctx context.Context, what, ns, pod, url, want string) {
	t.Helper()
	waitFor(t, ctx, what, func(context.Context) (bool, error) {
		out, err := curlIn(ns, pod, url)
		if err != nil || !strings.Contains(out, want) {
			return false, fmt.Errorf("%q, %v", out, err)
		}
		return true, nil
	})
}

// hostGet is an HTTP GET from the node, as kubelet probes.
func hostGet(url string) (int, string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Consul: the client, the catalog, the node agent's registrations.

// consul is a client of the suite's Consul agent.
func consul(t testing.TB) *capi.Client {
	t.Helper()
	cl, err := suite.ConsulClient()
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// checkStatus is the node agent's readiness check of the pod's service.
func checkStatus(cl *capi.Client, ns, pod string) (string, error) {
	checks, err := cl.Agent().ChecksWithFilter(fmt.Sprintf("CheckID == %q", contract.ServiceID(ns, pod)+contract.HealthCheckSuffix))
	if err != nil {
		return "", err
	}
	for _, c := range checks {
		return c.Status, nil
	}
	return "", fmt.Errorf("no readiness check for %s/%s", ns, pod)
}

// catalogMatches says the Consul catalog holds exactly one service
// instance and one sidecar proxy per pod in want (pod name → IP), with
// the node agent's IDs, addresses and meta, and nothing else under the name.
func catalogMatches(cl *capi.Client, ns, name string, want map[string]string) error {
	for _, svc := range []string{name, name + "-sidecar-proxy"} {
		entries, _, err := cl.Catalog().Service(svc, "", nil)
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, e := range entries {
			pod := e.ServiceMeta[contract.MetaPodName]
			id := contract.ServiceID(ns, pod)
			if svc != name {
				id = contract.ProxyID(ns, pod)
			}
			if e.ServiceID != id || e.ServiceMeta[contract.MetaNamespace] != ns || e.ServiceMeta[contract.MetaManagedBy] != contract.ManagedBy {
				return fmt.Errorf("%s instance %s: meta %v does not match its ID", svc, e.ServiceID, e.ServiceMeta)
			}
			got[pod] = e.ServiceAddress
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("catalog %s: %v, want %v", svc, got, want)
		}
	}
	return nil
}

// podIPs are the IPs of the namespace's running pods with label app=name.
func podIPs(ctx context.Context, cs *kubernetes.Clientset, ns, name string) (map[string]string, error) {
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, p := range pods.Items {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			out[p.Name] = p.Status.PodIP
		}
	}
	return out, nil
}

// waitCatalogFollows waits until the catalog holds exactly the n running
// pods of the Deployment.
func waitCatalogFollows(t *testing.T, ctx context.Context, cs *kubernetes.Clientset, cl *capi.Client, ns, name string, n int) map[string]string {
	t.Helper()
	var pods map[string]string
	waitFor(t, ctx, fmt.Sprintf("the catalog to hold the %d pods of %s", n, name), func(ctx context.Context) (bool, error) {
		var err error
		if pods, err = podIPs(ctx, cs, ns, name); err != nil || len(pods) != n {
			return false, fmt.Errorf("%d pods with an IP (%v), want %d", len(pods), err, n)
		}
		err = catalogMatches(cl, ns, name, pods)
		return err == nil, err
	})
	return pods
}

// passingProxies is how many instances of svc's sidecar Consul offers to
// Connect clients.
func passingProxies(t *testing.T, cl *capi.Client, svc string) int {
	t.Helper()
	entries, _, err := cl.Health().Connect(svc, "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// agentRegistrations are the IDs of the services the node's Consul agent
// holds for the namespace's pods.
func agentRegistrations(cl *capi.Client, ns string) ([]string, error) {
	svcs, err := cl.Agent().ServicesWithFilter(fmt.Sprintf("Meta[%q] == %q", contract.MetaNamespace, ns))
	if err != nil {
		return nil, err
	}
	var ids []string
	for id := range svcs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// leaveNoRegistrations makes the test's end delete the namespace's pods
// at once and wait until the node agent has deregistered them all, so
// that the next test using the same Consul service names starts clean
// (the seed's client takes 30 s to stop otherwise).
func leaveNoRegistrations(t *testing.T, cs *kubernetes.Clientset, cl *capi.Client, ns string) {
	t.Helper()
	t.Cleanup(func() {
		ctx := context.Background()
		_ = cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
		_ = cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{})
		waitFor(t, ctx, "the namespace's registrations gone", func(context.Context) (bool, error) {
			ids, err := agentRegistrations(cl, ns)
			return err == nil && len(ids) == 0, fmt.Errorf("%v (%v)", ids, err)
		})
	})
}

// meshlet's parts: the agent, the webhook, the CNI plugin and its rules.

// stopAgent takes the node agent off the node (a nodeSelector nothing matches)
// until the returned func puts it back and it is ready again.
func stopAgent(t testing.TB, ctx context.Context, cs *kubernetes.Clientset) (restart func()) {
	t.Helper()
	dss := cs.AppsV1().DaemonSets(cluster.MeshletNamespace)
	patch := func(sel string) {
		p := fmt.Sprintf(`{"spec":{"template":{"spec":{"nodeSelector":%s}}}}`, sel)
		if _, err := dss.Patch(context.Background(), cluster.AgentName, types.StrategicMergePatchType, []byte(p), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	restarted := false
	restart = func() {
		if restarted {
			return
		}
		restarted = true
		patch(`{"meshlet.io/e2e-no-node":null}`)
		waitFor(t, context.Background(), "the agent back", func(ctx context.Context) (bool, error) {
			err := cluster.AgentReady(ctx, cs)
			return err == nil, err
		})
	}
	t.Cleanup(restart)
	patch(`{"meshlet.io/e2e-no-node":"none"}`)
	waitFor(t, ctx, "the agent gone", func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(cluster.MeshletNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + cluster.AgentName})
		return err == nil && len(pods.Items) == 0, err
	})
	return restart
}

// waitWebhookRollout waits until the webhook's Deployment has rolled out:
// as many pods as replicas, each running the Deployment's current
// arguments and ready, none terminating (an old replica must not answer
// a review after the wait).
func waitWebhookRollout(t testing.TB, ctx context.Context, cs *kubernetes.Clientset) {
	t.Helper()
	waitFor(t, ctx, "the webhook's rollout", func(ctx context.Context) (bool, error) {
		d, err := cs.AppsV1().Deployments(cluster.MeshletNamespace).Get(ctx, cluster.WebhookName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pods, err := cs.CoreV1().Pods(cluster.MeshletNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + cluster.WebhookName})
		if err != nil {
			return false, err
		}
		if d.Status.ObservedGeneration != d.Generation || len(pods.Items) != int(*d.Spec.Replicas) {
			return false, fmt.Errorf("generation %d observed %d, %d pods for %d replicas", d.Generation, d.Status.ObservedGeneration, len(pods.Items), *d.Spec.Replicas)
		}
		want := d.Spec.Template.Spec.Containers[0].Args
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || !podReady(&p) || !slices.Equal(p.Spec.Containers[0].Args, want) {
				return false, fmt.Errorf("pod %s: terminating %v, ready %v, current args %v", p.Name, p.DeletionTimestamp != nil, podReady(&p),
					slices.Equal(p.Spec.Containers[0].Args, want))
			}
		}
		return true, nil
	})
}

// uninstallRemovesPlugin uninstalls meshlet the given way, waits until
// meshlet-cni is gone from the node, then installs the chart again and
// checks the plugin is chained and the webhook injects.
func uninstallRemovesPlugin(t *testing.T, uninstall func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	restored := false
	t.Cleanup(func() {
		if !restored {
			_ = lc.InstallMeshlet(context.Background())
		}
	})
	if err := uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	waitPluginRemoved(t, ctx)
	if err := lc.InstallMeshlet(ctx); err != nil {
		t.Fatal(err)
	}
	restored = true
	b, err := os.ReadFile(lc.ConflistFile())
	if err != nil || !install.HasEntry(b) {
		t.Fatalf("reinstalled agent did not chain meshlet-cni: %v", err)
	}
	if err := lc.WaitWebhook(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitPluginRemoved waits until meshlet-cni's conflist entry, binary and
// kubeconfig are gone from the node.
func waitPluginRemoved(t *testing.T, ctx context.Context) {
	t.Helper()
	plugin := lc.CNIBinDir() + "/meshlet-cni"
	kubeconfig := lc.AgentKubeconfigDir() + "/meshlet-cni.kubeconfig"
	waitFor(t, ctx, "meshlet-cni removed from the node", func(context.Context) (bool, error) {
		b, err := os.ReadFile(lc.ConflistFile())
		if err != nil || install.HasEntry(b) {
			return false, err
		}
		for _, f := range []string{plugin, kubeconfig} {
			if _, err := os.Stat(f); !os.IsNotExist(err) {
				return false, fmt.Errorf("%s still there (%v)", f, err)
			}
		}
		return true, nil
	})
}

// redirectConfig is the redirect config the plugin's tests and
// benchmarks give an injected pod: one exclusion of each kind, so that
// each kind of exclusion rule is in the plan.
const redirectConfig = `{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001,` +
	`"ExcludeInboundPorts":["21000"],"ExcludeOutboundPorts":["443"],"ExcludeOutboundCIDRs":["10.96.0.1/32"],"ExcludeUIDs":["1000"]}`

// injectedAnnotations are the annotations the webhook gives a pod it
// injects with transparent proxy and redirect config cfg.
func injectedAnnotations(cfg string) map[string]string {
	return map[string]string{
		contract.InjectStatus:   "injected",
		contract.TProxyStatus:   contract.TProxyEnabled,
		contract.RedirectConfig: cfg,
	}
}

// mustPlan is the redirection plan of a pod injected with cfg.
func mustPlan(t testing.TB, cfg string) *iptables.Plan {
	t.Helper()
	p, err := iptables.RedirectPlan(injectedAnnotations(cfg))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// applier applies and verifies rules with the iptables backend the
// host's iptables command uses.
func applier(t testing.TB) iptables.Applier {
	t.Helper()
	mode, err := iptables.DetectMode()
	if err != nil {
		t.Fatal(err)
	}
	return iptables.Applier{Mode: mode}
}

// redirected says whether the running pod's netns holds its redirection.
func redirected(t *testing.T, ctx context.Context, pod *corev1.Pod) error {
	t.Helper()
	netns, err := lc.PodNetNS(ctx, pod.Namespace, pod.Name)
	if err != nil {
		return err
	}
	plan, err := iptables.RedirectPlan(pod.Annotations)
	if err != nil || plan == nil {
		t.Fatalf("pod %s: redirect plan %v, %v", pod.Name, plan, err)
	}
	return applier(t).Verify(netns, plan, []iptables.Family{iptables.IPv4})
}

// Host processes and timings.

// startHostProcess starts a helper process on the host and stops it, by
// its PID, when the test ends.
func startHostProcess(t testing.TB, argv ...string) *exec.Cmd {
	t.Helper()
	return startHostProcessTee(t, nil, argv...)
}

// startHostProcessTee is startHostProcess that also copies the process's
// output, as it comes, to tee (when not nil), which the test may read
// while the process runs.
func startHostProcessTee(t testing.TB, tee io.Writer, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	var out strings.Builder
	var w io.Writer = &out
	if tee != nil {
		w = io.MultiWriter(&out, tee)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", argv[0], out.String())
		}
	})
	return cmd
}

// percentile is the q quantile of d (the nearest rank below), in
// milliseconds.
func percentile(d []time.Duration, q float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[int(float64(len(s)-1)*q)].Microseconds()) / 1000
}

// upgradeRelease helm-upgrades the local release with sets and waits for
// the webhook's rollout; the release's own values come back, rolled out,
// when tb ends.
func upgradeRelease(tb testing.TB, ctx context.Context, cs *kubernetes.Clientset, sets ...string) {
	tb.Helper()
	tb.Cleanup(func() {
		if err := lc.InstallMeshlet(context.Background()); err != nil {
			tb.Errorf("restore the release: %v", err)
			return
		}
		waitWebhookRollout(tb, context.Background(), cs)
	})
	if err := lc.UpgradeMeshlet(ctx, sets...); err != nil {
		tb.Fatal(err)
	}
	waitWebhookRollout(tb, ctx, cs)
}
