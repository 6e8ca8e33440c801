package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/daemon/install"
	"github.com/meshlet/meshlet/daemon/repair"
	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// The node agent runs as a DaemonSet on the local cluster (cluster-up
// installs it); these tests check what it does through the API server and
// the real Consul client agent.

// meshDeployment is an injected Deployment whose app's readiness a test
// can flip: the probe fails while /tmp/unready exists. A Service of the
// same name selects it, as in consul-k8s' manifests.
func meshDeployment(t *testing.T, cs *kubernetes.Clientset, ns, name string, replicas int32) {
	t.Helper()
	labels := map[string]string{"app": name}
	app := corev1.Container{Name: "app", Image: suite.Images.StaticClient, ImagePullPolicy: pullPolicy(),
		Command: []string{"sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"},
		Ports:   []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
			Command: []string{"sh", "-c", "test ! -e /tmp/unready"}}}, PeriodSeconds: 1, FailureThreshold: 1}}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(replicas), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{contract.Inject: "true"}},
				Spec:       corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1), Containers: []corev1.Container{app}},
			}},
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	ctx := context.Background()
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// consulK8sAnnotations are what consul-k8s' webhook writes on a pod it
// injects with transparent proxy: in its CNI mode the redirect config too;
// without it, its init container redirects. Never meshlet's registration.
func consulK8sAnnotations(cniMode bool) map[string]string {
	ann := map[string]string{
		contract.Inject:       "true",
		contract.InjectStatus: contract.Injected,
		contract.TProxyStatus: contract.TProxyEnabled,
	}
	if cniMode {
		ann[contract.RedirectConfig] = redirectConfig
	}
	return ann
}

// otherDeployment is a one-replica Deployment whose pods carry ann as
// another injector left them; meshlet's webhook admits them as they are.
func otherDeployment(t *testing.T, cs *kubernetes.Clientset, ns, name string, ann map[string]string) {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: ann},
				Spec:       corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1), Containers: []corev1.Container{shellContainer()}},
			}},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func scaleDeployment(t *testing.T, cs *kubernetes.Clientset, ns, name string, n int32) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
	if _, err := cs.AppsV1().Deployments(ns).Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestAgentFollowsDeployment(t *testing.T) {
	requireCluster(t)
	cs := clientset(t)
	ns := testNamespace(t, cs, "agent-scale")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl := consul(t)
	meshDeployment(t, cs, ns, "web", 0)
	waitCatalogFollows(t, ctx, cs, cl, ns, "web", 0)

	scaleDeployment(t, cs, ns, "web", 3)
	waitCatalogFollows(t, ctx, cs, cl, ns, "web", 3)
	scaleDeployment(t, cs, ns, "web", 1)
	pods := waitCatalogFollows(t, ctx, cs, cl, ns, "web", 1)

	var pod string
	for p := range pods {
		pod = p
	}
	// The check follows the pod's readiness: the probe fails on demand,
	// kubelet turns the pod unready, the node agent sets the check critical, and
	// Consul stops offering the pod's proxy to Connect clients.
	waitFor(t, ctx, "the check passing", func(context.Context) (bool, error) {
		st, err := checkStatus(cl, ns, pod)
		return st == capi.HealthPassing && passingProxies(t, cl, "web") == 1, err
	})
	kubectl(t, "exec", "-n", ns, pod, "-c", "app", "--", "touch", "/tmp/unready")
	waitFor(t, ctx, "the check critical after the pod turned unready", func(context.Context) (bool, error) {
		st, err := checkStatus(cl, ns, pod)
		return st == capi.HealthCritical && passingProxies(t, cl, "web") == 0, err
	})
	kubectl(t, "exec", "-n", ns, pod, "-c", "app", "--", "rm", "/tmp/unready")
	waitFor(t, ctx, "the check passing again", func(context.Context) (bool, error) {
		st, err := checkStatus(cl, ns, pod)
		return st == capi.HealthPassing && passingProxies(t, cl, "web") == 1, err
	})
}

func TestAgentRecovers(t *testing.T) {
	requireLocalNode(t, "restarts the node's Consul client agent, a host process there")
	cs := clientset(t)
	ns := testNamespace(t, cs, "agent-recover")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl := consul(t)
	meshDeployment(t, cs, ns, "web", 2)
	before := waitCatalogFollows(t, ctx, cs, cl, ns, "web", 2)

	t.Run("consul agent restarted empty", func(t *testing.T) {
		if err := lc.RestartConsulClient(ctx, true); err != nil {
			t.Fatal(err)
		}
		if entries, _, err := cl.Catalog().Service("web", "", nil); err == nil && len(entries) != 0 {
			// The node agent may already have re-registered; the catalog then
			// shows it. Either way the wait below decides.
			t.Logf("catalog right after the restart: %d instances", len(entries))
		}
		waitCatalogFollows(t, ctx, cs, cl, ns, "web", 2)
	})

	t.Run("pod deleted while the agent was down", func(t *testing.T) {
		restart := stopAgent(t, ctx, cs)
		var gone string
		for p := range before {
			gone = p
			break
		}
		if err := cs.CoreV1().Pods(ns).Delete(ctx, gone, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
			t.Fatal(err)
		}
		// The Deployment replaces it; nobody registers the new pod and
		// nobody removes the old one's registration while the node agent is down.
		waitFor(t, ctx, "the replacement pod", func(ctx context.Context) (bool, error) {
			pods, err := podIPs(ctx, cs, ns, "web")
			_, old := pods[gone]
			return err == nil && len(pods) == 2 && !old, err
		})
		if err := catalogMatches(cl, ns, "web", before); err != nil {
			t.Fatalf("the catalog changed while the agent was down: %v", err)
		}
		restart()
		after := waitCatalogFollows(t, ctx, cs, cl, ns, "web", 2)
		if _, ok := after[gone]; ok {
			t.Fatalf("deleted pod %s still registered", gone)
		}
		// The new pod's sidecar could not serve before the node agent was back:
		// a regular container's hold gave up and let the app start, and
		// the proxy, left running, serves once registered. Not restarted.
		for name := range after {
			if _, old := before[name]; old {
				continue
			}
			p := waitPodState(t, ctx, cs, ns, name, "Ready", podReady)
			for _, st := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
				if st.Name == sidecarName() && st.RestartCount != 0 {
					t.Errorf("pod %s: sidecar restarted %d times; want it kept running through the hold", name, st.RestartCount)
				}
			}
		}
	})
}

// TestAgentEventForAmbiguousService: a pod two Services select, without
// connect-service, is not registered, and an Event names both Services
// and what to fix.
func TestAgentEventForAmbiguousService(t *testing.T) {
	requireCluster(t)
	cs := clientset(t)
	ns := testNamespace(t, cs, "agent-event")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, name := range []string{"web", "web-all"} {
		if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "lonely"}, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}},
			metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	createPodSpec(t, cs, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "lonely", Labels: map[string]string{"app": "lonely"},
		Annotations: map[string]string{contract.Inject: "true"}},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](1), Containers: []corev1.Container{echoContainer("app", "hi", 8080, 0)}}})
	waitFor(t, ctx, "an Event naming the problem", func(ctx context.Context) (bool, error) {
		evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=lonely,reason=MeshletRegistrationFailed"})
		if err != nil || len(evs.Items) == 0 {
			return false, err
		}
		msg := evs.Items[0].Message
		if !strings.Contains(msg, "the Services web, web-all all select the pod") || !strings.Contains(msg, contract.Service) {
			return false, fmt.Errorf("event message %q does not say what to fix", msg)
		}
		return true, nil
	})
}

// agentMetric reads one series from the node agent's /metrics.
func agentMetric(t *testing.T, series string) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://%s:%d/metrics", cluster.NodeIP, cluster.AgentPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			return v
		}
	}
	t.Fatalf("agent metrics lack %s", series)
	return ""
}

func TestAgentRechainsConflist(t *testing.T) {
	requireLocalNode(t, "rewrites the node's CNI conflist and reads the agent's metrics at the node's IP")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before := agentMetric(t, `meshlet_agent_cni_events_total{kind="rechained"}`)
	// A primary CNI rewrites its config, in place, without meshlet-cni.
	if err := os.WriteFile(lc.ConflistFile(), []byte(lc.Conflist()), 0o644); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	waitFor(t, ctx, "meshlet-cni chained again", func(context.Context) (bool, error) {
		b, err := os.ReadFile(lc.ConflistFile())
		return err == nil && install.HasEntry(b), err
	})
	took := time.Since(t0)
	t.Logf("entry back after %s", took.Round(time.Millisecond))
	if took > 3*time.Second {
		t.Errorf("the entry took %s to come back, want a second or so", took)
	}
	waitFor(t, ctx, "containerd to load it", func(ctx context.Context) (bool, error) {
		err := lc.RuntimeUsesPlugin(ctx, "meshlet-cni")
		return err == nil, err
	})
	if after := agentMetric(t, `meshlet_agent_cni_events_total{kind="rechained"}`); after == before {
		t.Errorf("rechained counter still %s", after)
	}
	if got := agentMetric(t, "meshlet_agent_cni_installed"); got != "1" {
		t.Errorf("meshlet_agent_cni_installed %s, want 1", got)
	}
}

func podEvent(ctx context.Context, cs *kubernetes.Clientset, ns, pod, reason string) (string, error) {
	evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod + ",reason=" + reason})
	if err != nil || len(evs.Items) == 0 {
		return "", fmt.Errorf("no %s Event on %s (%v)", reason, pod, err)
	}
	return evs.Items[0].Message, nil
}

// TestAgentRepairsPodsStartedBeforePlugin: pods started while meshlet-cni
// was not chained are repaired in place (bare) or deleted (with a
// controller) by the restarted node agent; pods consul-k8s injected are
// never touched, and start under meshlet-cni in both of its modes.
func TestAgentRepairsPodsStartedBeforePlugin(t *testing.T) {
	requireLocalNode(t, "rewrites the node's CNI conflist and reads pods' rules in their netns")
	cs := clientset(t)
	ns := testNamespace(t, cs, "agent-repair")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// A node before the node agent ran: no node agent, and the primary CNI's
	// conflist without meshlet-cni (written in place, as a CNI would).
	restart := stopAgent(t, ctx, cs)
	if err := os.WriteFile(lc.ConflistFile(), []byte(lc.Conflist()), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "containerd to drop meshlet-cni", func(ctx context.Context) (bool, error) {
		return lc.RuntimeUsesPlugin(ctx, "meshlet-cni") != nil, nil
	})
	bare := createPod(t, cs, ns, "bare", map[string]string{contract.Inject: "true"}, shellContainer())
	meshDeployment(t, cs, ns, "web", 1)
	// A pod consul-k8s injected in its CNI mode, with a controller: meshlet
	// did not inject it, and must neither repair nor delete it.
	otherDeployment(t, cs, ns, "consulk8s", consulK8sAnnotations(true))
	// With an IP the sandbox is up and its network in use, though the
	// native sidecar, waiting for the node agent to register it, holds the pod
	// in Pending.
	var owned, other *corev1.Pod
	waitFor(t, ctx, "the three pods with an IP", func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil || len(pods.Items) != 3 {
			return false, err
		}
		for i, p := range pods.Items {
			if p.Status.PodIP == "" {
				return false, nil
			}
			switch {
			case p.Name == "bare":
				bare = &pods.Items[i]
			case p.Labels["app"] == "consulk8s":
				other = &pods.Items[i]
			default:
				owned = &pods.Items[i]
			}
		}
		return true, nil
	})
	for _, p := range []*corev1.Pod{bare, owned} {
		if err := redirected(t, ctx, p); err == nil {
			t.Fatalf("pod %s has its redirection though meshlet-cni was not chained", p.Name)
		}
	}

	restart()
	// The bare pod, which nothing would recreate, is repaired in place.
	waitFor(t, ctx, "the bare pod repaired with an Event", func(ctx context.Context) (bool, error) {
		msg, err := podEvent(ctx, cs, ns, "bare", repair.ReasonMissing)
		if err != nil {
			return false, err
		}
		if !strings.Contains(msg, "repaired in place") {
			return false, fmt.Errorf("Event %q", msg)
		}
		return true, redirected(t, ctx, bare)
	})
	// The Deployment's pod is deleted; its replacement gets the plugin.
	waitFor(t, ctx, "the Deployment's pod replaced with an Event", func(ctx context.Context) (bool, error) {
		msg, err := podEvent(ctx, cs, ns, owned.Name, repair.ReasonMissing)
		if err != nil {
			return false, err
		}
		if !strings.Contains(msg, "deleted so that its controller recreates it") {
			return false, fmt.Errorf("Event %q", msg)
		}
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil || len(pods.Items) != 1 || pods.Items[0].UID == owned.UID || pods.Items[0].Status.Phase != corev1.PodRunning {
			return false, err
		}
		return true, redirected(t, ctx, &pods.Items[0])
	})
	// By now the pass that repaired and deleted has long ended: consul-k8s'
	// pod is the same pod, untouched and unreported.
	if p, err := cs.CoreV1().Pods(ns).Get(ctx, other.Name, metav1.GetOptions{}); err != nil || p.UID != other.UID || p.DeletionTimestamp != nil {
		t.Errorf("consul-k8s' pod %s: %v (deleting: %v): meshlet must never delete a pod it did not inject", other.Name, err, p != nil && p.DeletionTimestamp != nil)
	}
	if msg, err := podEvent(ctx, cs, ns, other.Name, repair.ReasonMissing); err == nil {
		t.Errorf("consul-k8s' pod %s got meshlet's Event: %q", other.Name, msg)
	}
	// consul-k8s without its CNI plugin: no redirect config, its init
	// container redirects. meshlet-cni, chained again, lets it start.
	createPod(t, cs, ns, "consulk8s-init", consulK8sAnnotations(false), shellContainer())
	if p := waitPodRunning(t, ctx, cs, ns, "consulk8s-init"); injected(p) && p.Annotations[contract.RegistrationKey] != "" {
		t.Errorf("pod consulk8s-init was injected by meshlet's webhook")
	}
	if got := agentMetric(t, `meshlet_agent_unprotected_pods_total{action="repaired"}`); got != "1" {
		t.Errorf(`unprotected_pods_total{action="repaired"} = %s, want 1`, got)
	}
	if got := agentMetric(t, `meshlet_agent_unprotected_pods_total{action="deleted"}`); got != "1" {
		t.Errorf(`unprotected_pods_total{action="deleted"} = %s, want 1`, got)
	}
}

// TestAgentUninstallsOnDelete: deleting the node agent's DaemonSet (an
// uninstall) removes meshlet-cni from the node; the node agent's pods being
// replaced (TestAgentRecovers stops and starts it) does not.
func TestAgentUninstallsOnDelete(t *testing.T) {
	requireLocalNode(t, "reads the node's CNI dirs and reinstalls meshlet with the local cluster's values")
	cs := clientset(t)
	uninstallRemovesPlugin(t, func(ctx context.Context) error {
		return cs.AppsV1().DaemonSets(cluster.MeshletNamespace).Delete(ctx, cluster.AgentName, metav1.DeleteOptions{})
	})
}
