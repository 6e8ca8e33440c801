package e2e

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/webhook"
)

// The seed's walkthrough (the product SPEC's "Users and the walkthrough
// that must work"), run as a user runs it: the seed's manifests from
// examples/mesh/ (only the images differ), kubectl, the consul CLI, and
// meshlet as the chart installed it. TestSeedWalkthrough runs on any
// cluster whose data plane has transparent proxy (meshlet, envoy): it
// reaches Consul at suite.ConsulAddr and runs the suite's images.

const helloWorld = `"hello world"` // http-echo -text="hello world" answers with the quotes

// TestSeedWalkthrough, step by step on one namespace:
//   - the server: the seed's static-server.yaml comes up with the sidecar,
//     connect-inject-status: injected, and is registered in Consul as
//     static-server and static-server-sidecar-proxy at the pod's IP;
//   - the client: the seed's static-client.yaml; `kubectl exec
//     deploy/static-client -- curl -s http://static-server/` answers
//     "hello world" (Kubernetes DNS, transparent proxy);
//   - intentions: a deny makes the very next request exit 52, deleting it
//     makes the very next one answer again, and neither pod is touched
//     (same UIDs, no container restarted);
//   - outside the mesh: a plain pod and the node itself get no HTTP answer
//     from the server pod's :8080, while both get the answer of a plain
//     pod's :8080 (so the check can see an answer), and the client app
//     still reaches that plain pod (passthrough);
//   - the explicit-upstream variant (static-client-upstream.yaml):
//     localhost:1234 and $STATIC_SERVER_CONNECT_SERVICE_HOST:…_PORT;
//   - readiness: the server with an exec readiness probe; failing it makes
//     the client's requests fail within seconds, passing it brings them back;
//   - scale up, delete, force-delete, scale down: the Consul catalog holds
//     the running pods' IPs, the node agent nothing else;
//   - a meshed Deployment whose app curls, once, as it starts, its
//     explicit upstream and http://static-server/: both answer (the
//     sidecar, first and holding the app, serves before the app starts);
//   - a meshed Job with an explicit upstream curls once at its start, with
//     no retry and backoffLimit 0: its one attempt succeeds and the Job
//     completes (the native sidecar does not keep it running).
func TestSeedWalkthrough(t *testing.T) {
	// Data plane consul has no transparent proxy: http://static-server/
	// would not reach the mesh.
	requireDataPlane(t, webhook.DataPlaneMeshlet, webhook.DataPlaneEnvoy)
	cs := clientset(t)
	cl := consul(t)
	ns := testNamespace(t, cs, "seed")
	leaveNoRegistrations(t, cs, cl, ns)
	if suite.ACLs() {
		// The seed: "when ACLs are enabled with default deny policy, you
		// must supply an intention". One allowing every source keeps the
		// steps below as the seed writes them: the deny for static-client
		// is more precise and wins; deleting it falls back to this.
		allowAllTo(t, "static-server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		t1 := time.Now()
		if !t.Run(name, f) {
			t.FailNow()
		}
		t.Logf("%s: %s (at %s)", name, time.Since(t1).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	}
	// kexec is `kubectl exec <target> -- <argv>` as the seed writes it: no
	// -c, the webhook makes the app kubectl's default container.
	kexec := func(target string, argv ...string) (string, error) {
		return kubectlErr(append([]string{"exec", "-n", ns, target, "--"}, argv...)...)
	}
	// hello asserts that one request answers "hello world", nothing else.
	hello := func(t *testing.T, what, target string, argv ...string) {
		t.Helper()
		out, err := kexec(target, argv...)
		if err != nil || strings.TrimSpace(out) != helloWorld {
			t.Fatalf("%s: %s → %q (%v), want %s", what, strings.Join(argv, " "), out, err, helloWorld)
		}
	}
	waitHello := func(t *testing.T, what, target string, argv ...string) {
		t.Helper()
		waitFor(t, ctx, what, func(context.Context) (bool, error) {
			out, err := kexec(target, argv...)
			return err == nil && strings.TrimSpace(out) == helloWorld, fmt.Errorf("%q, %v", out, err)
		})
	}
	curlServer := []string{"curl", "-s", "http://static-server/"}
	var server *corev1.Pod

	step("static-server injected and registered", func(t *testing.T) {
		kubectl(t, "apply", "-n", ns, "-f", meshManifest(t, "static-server.yaml"))
		kubectl(t, "rollout", "status", "-n", ns, "deploy/static-server", "--timeout=120s")
		server = onlyPod(t, ctx, cs, ns, "app=static-server")
		if got := server.Annotations[contract.InjectStatus]; got != contract.Injected {
			t.Errorf("annotation %s = %q, want %q", contract.InjectStatus, got, contract.Injected)
		}
		checkPlacement(t, server)
		for _, c := range append(server.Status.InitContainerStatuses, server.Status.ContainerStatuses...) {
			if !c.Ready || c.State.Running == nil {
				t.Errorf("container %s not running and ready: %+v", c.Name, c.State)
			}
		}
		// The Consul API: both names, the pod's IP, the proxy for the service.
		waitFor(t, ctx, "static-server and its proxy in the catalog at the pod's IP", func(context.Context) (bool, error) {
			err := catalogMatches(cl, ns, "static-server", map[string]string{server.Name: server.Status.PodIP})
			return err == nil, err
		})
		proxies, _, err := cl.Catalog().Service("static-server-sidecar-proxy", "", nil)
		if err != nil || len(proxies) != 1 {
			t.Fatalf("static-server-sidecar-proxy: %v, %d instances", err, len(proxies))
		}
		if p := proxies[0]; p.ServiceProxy == nil || p.ServiceProxy.DestinationServiceName != "static-server" ||
			p.ServiceAddress != server.Status.PodIP || p.ServicePort != 20000 {
			t.Errorf("static-server-sidecar-proxy: %s:%d, proxy %+v; want the proxy of static-server at %s:20000",
				p.ServiceAddress, p.ServicePort, p.ServiceProxy, server.Status.PodIP)
		}
	})

	step("static-client: hello world through Kubernetes DNS", func(t *testing.T) {
		kubectl(t, "apply", "-n", ns, "-f", meshManifest(t, "static-client.yaml"))
		kubectl(t, "rollout", "status", "-n", ns, "deploy/static-client", "--timeout=120s")
		waitHello(t, "hello world through the mesh", "deploy/static-client", curlServer...)
	})

	step("intentions: deny, exit 52, delete, hello world, no pod touched", func(t *testing.T) {
		before := podStates(t, ctx, cs, ns)
		intention := func(args ...string) {
			t.Helper()
			if out, err := consulCLI(args...); err != nil {
				t.Fatalf("consul %s: %v: %s", strings.Join(args, " "), err, out)
			}
		}
		// Intentions outlive the namespace: never leave one behind.
		t.Cleanup(func() { _, _ = consulCLI("intention", "delete", "static-client", "static-server") })
		denied := func(out string, err error) bool {
			return err != nil && strings.Contains(out, "command terminated with exit code 52")
		}
		intention("intention", "create", "-deny", "static-client", "static-server")
		if suite.DataPlane == webhook.DataPlaneMeshlet {
			// The very next request, not eventually one: meshlet's proxy
			// asks the Consul agent at each connection.
			if out, err := kexec("deploy/static-client", curlServer...); !denied(out, err) {
				t.Errorf("the first request after the deny: %q (%v), want curl's exit code 52 (empty reply)", out, err)
			}
		} else {
			// Envoy learns of the intention from an xDS push that follows
			// it; within seconds, with the same empty reply.
			bounded, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			waitFor(t, bounded, "curl's exit code 52 (empty reply) after the deny", func(context.Context) (bool, error) {
				out, err := kexec("deploy/static-client", curlServer...)
				return denied(out, err), fmt.Errorf("%q, %v", out, err)
			})
		}
		intention("intention", "delete", "static-client", "static-server")
		if suite.DataPlane == webhook.DataPlaneMeshlet {
			hello(t, "the first request after the intention's deletion", "deploy/static-client", curlServer...)
		} else {
			waitHello(t, "hello world after the intention's deletion", "deploy/static-client", curlServer...)
		}
		if after := podStates(t, ctx, cs, ns); !equalMaps(before, after) {
			t.Errorf("pods changed across the intention's creation and deletion:\nbefore %v\nafter  %v", before, after)
		}
	})

	step("outside the mesh: no answer from the server's app port", func(t *testing.T) {
		plain := createPod(t, cs, ns, "plain", nil, echoContainer("plain", "plain pod", 8080, 0))
		outsider := createPod(t, cs, ns, "outsider", nil, corev1.Container{Name: "static-client", Image: suite.Images.StaticClient,
			Command: []string{"sleep", "3600"}})
		plainIP := waitPodRunning(t, ctx, cs, ns, plain.Name).Status.PodIP
		if injected(waitPodRunning(t, ctx, cs, ns, outsider.Name)) {
			t.Fatal("the outsider was injected")
		}
		// Controls: from the outsider and from the node, a plain pod's
		// :8080 answers, so a missing answer below is the server's doing.
		// The node is this process only on the local cluster: elsewhere
		// the test's host is not a node and cannot route pod IPs.
		waitCurl(t, ctx, "the outsider reaching a plain pod", ns, "pod/outsider", "http://"+plainIP+":8080/", "plain pod")
		if lc == nil {
			t.Log("not checked from the node: the test's host is not one of this cluster's nodes")
		} else if resp, err := nodeHTTP(plainIP + ":8080"); !strings.HasPrefix(resp, "HTTP/1.1 200") || !strings.Contains(resp, "plain pod") {
			t.Fatalf("from the node, the plain pod's :8080: %q (%v), want its answer", resp, err)
		}
		serverIP := server.Status.PodIP
		out, err := curlIn(ns, "pod/outsider", "http://"+serverIP+":8080/")
		if err == nil || !(strings.Contains(out, "exit code 52") || strings.Contains(out, "exit code 56")) {
			t.Errorf("from a pod outside the mesh, the server pod's :8080: %q (%v), want no HTTP answer (curl exit 52 or 56)", out, err)
		}
		if lc != nil {
			resp, err := nodeHTTP(serverIP + ":8080")
			if strings.HasPrefix(resp, "HTTP/") || strings.Contains(resp, "hello world") {
				t.Errorf("from the node, the server pod's :8080 answered %q: want no HTTP answer", resp)
			}
			t.Logf("from the node, the server pod's :8080: %d bytes, %v", len(resp), err)
		}
		// Transparent proxy lets the client app reach what is not in the mesh.
		waitCurl(t, ctx, "the client app reaching a pod outside the mesh", ns, "deploy/static-client", "http://"+plainIP+":8080/", "plain pod")
	})

	step("explicit upstream: localhost:1234", func(t *testing.T) {
		kubectl(t, "apply", "-n", ns, "-f", meshManifest(t, "static-client-upstream.yaml"))
		kubectl(t, "rollout", "status", "-n", ns, "deploy/static-client", "--timeout=120s")
		// The replaced pod takes the seed's 30 s grace period to go (its
		// shell ignores SIGTERM); exec into the new one by name.
		var client string
		waitFor(t, ctx, "the upstream variant's pod ready", func(ctx context.Context) (bool, error) {
			pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=static-client"})
			if err != nil {
				return false, err
			}
			for _, p := range pods.Items {
				if p.DeletionTimestamp == nil && p.Annotations[contract.Upstreams] == "static-server:1234" && podReady(&p) {
					client = "pod/" + p.Name
					return true, nil
				}
			}
			return false, nil
		})
		waitHello(t, "hello world on localhost:1234", client, "curl", "-s", "localhost:1234")
		if out, err := kexec(client, "sh", "-c", "echo $STATIC_SERVER_CONNECT_SERVICE_HOST:$STATIC_SERVER_CONNECT_SERVICE_PORT"); err != nil || strings.TrimSpace(out) != "127.0.0.1:1234" {
			t.Errorf("the upstream's environment: %q (%v), want 127.0.0.1:1234", out, err)
		}
		hello(t, "the upstream through its environment variables", client,
			"sh", "-c", "curl -s $STATIC_SERVER_CONNECT_SERVICE_HOST:$STATIC_SERVER_CONNECT_SERVICE_PORT")
		// Transparent proxy stays on in the variant.
		hello(t, "http://static-server/ from the upstream variant", client, curlServer...)
	})

	step("readiness: failing stops the client's requests, passing brings them back", func(t *testing.T) {
		kubectl(t, "apply", "-n", ns, "-f", serverWithReadinessProbe(t))
		kubectl(t, "rollout", "status", "-n", ns, "deploy/static-server", "--timeout=120s")
		pods := waitCatalogFollows(t, ctx, cs, cl, ns, "static-server", 1)
		var pod string
		for p := range pods {
			pod = p
		}
		p, err := cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c := container(t, p, "static-server"); c.ReadinessProbe == nil || c.ReadinessProbe.Exec == nil {
			t.Fatalf("pod %s: no exec readiness probe", pod)
		}
		waitPodState(t, ctx, cs, ns, pod, "Ready", podReady)
		waitHello(t, "hello world from the probed server", "deploy/static-client", curlServer...)

		flip := func(what string, argv []string, succeed bool) {
			t.Helper()
			t1 := time.Now()
			if out, err := kexec("pod/"+pod, argv...); err != nil {
				t.Fatalf("kubectl exec %s -- %s: %v: %s", pod, strings.Join(argv, " "), err, out)
			}
			bounded, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			requests := 0
			waitFor(t, bounded, what, func(context.Context) (bool, error) {
				requests++
				out, err := kexec("deploy/static-client", "curl", "-s", "-m", "2", "http://static-server/")
				ok := err == nil && strings.TrimSpace(out) == helloWorld
				return ok == succeed, fmt.Errorf("%q, %v", out, err)
			})
			t.Logf("%s: %.1f s after kubectl exec %s (request %d)", what, time.Since(t1).Seconds(), strings.Join(argv, " "), requests)
		}
		flip("the client's requests failing", []string{"touch", "/tmp/unhealthy"}, false)
		if st, err := checkStatus(cl, ns, pod); st != capi.HealthCritical {
			t.Errorf("the server's Consul check: %q (%v), want critical", st, err)
		}
		flip("the client's requests answered again", []string{"rm", "/tmp/unhealthy"}, true)
	})

	step("scale, delete, force-delete: Consul follows", func(t *testing.T) {
		follow := func(what string, n int) map[string]string {
			t.Helper()
			t1 := time.Now()
			pods := waitCatalogFollows(t, ctx, cs, cl, ns, "static-server", n)
			waitAgentHoldsPods(t, ctx, cs, cl, ns)
			t.Logf("%s: catalog and agent followed in %s", what, time.Since(t1).Round(time.Millisecond))
			return pods
		}
		kubectl(t, "scale", "-n", ns, "deploy/static-server", "--replicas=3")
		pods := follow("scaled to 3", 3)
		names := slices.Sorted(func(yield func(string) bool) {
			for p := range pods {
				if !yield(p) {
					return
				}
			}
		})
		kubectl(t, "delete", "pod", "-n", ns, names[0])
		after := follow("one pod deleted", 3)
		if _, ok := after[names[0]]; ok {
			t.Fatalf("deleted pod %s still registered", names[0])
		}
		kubectl(t, "delete", "pod", "-n", ns, names[1], "--grace-period=0", "--force")
		after = follow("one pod force-deleted", 3)
		if _, ok := after[names[1]]; ok {
			t.Fatalf("force-deleted pod %s still registered", names[1])
		}
		kubectl(t, "scale", "-n", ns, "deploy/static-server", "--replicas=1")
		follow("scaled to 1", 1)
		waitHello(t, "hello world after the churn", "deploy/static-client", curlServer...)
	})

	step("a meshed app reaches its upstreams the moment it starts", func(t *testing.T) {
		kubectl(t, "apply", "-n", ns, "-f", writeManifest(t, fmt.Sprintf(eagerClient, suite.Images.StaticClient)))
		kubectl(t, "rollout", "status", "-n", ns, "deploy/eager-client", "--timeout=120s")
		pod := onlyPod(t, ctx, cs, ns, "app=eager-client")
		checkPlacement(t, pod)
		var log string
		waitFor(t, ctx, "the app's two curls in its log", func(context.Context) (bool, error) {
			out, err := kubectlErr("logs", "-n", ns, pod.Name, "-c", "eager-client")
			log = out
			return err == nil && strings.Count(out, "\n") >= 2, nil
		})
		if want := helloWorld + "\n" + helloWorld + "\n"; log != want {
			t.Fatalf("the app's curls at its start printed %q, want %q (upstream, then transparent)", log, want)
		}
		for _, c := range pod.Status.ContainerStatuses {
			if c.RestartCount != 0 {
				t.Errorf("container %s restarted %d times", c.Name, c.RestartCount)
			}
		}
	})

	step("a meshed Job: its one attempt succeeds at once and it completes", func(t *testing.T) {
		t1 := time.Now()
		kubectl(t, "apply", "-n", ns, "-f", writeManifest(t, fmt.Sprintf(upstreamJob, suite.Images.StaticClient)))
		var job *batchv1.Job
		waitFor(t, ctx, "the Job to finish", func(ctx context.Context) (bool, error) {
			j, err := cs.BatchV1().Jobs(ns).Get(ctx, "job-client", metav1.GetOptions{})
			job = j
			return err == nil && (jobCondition(j, batchv1.JobComplete) || jobCondition(j, batchv1.JobFailed)), err
		})
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=job-client"})
		if err != nil || len(pods.Items) != 1 {
			t.Fatalf("the Job's pods: %v, %d; want its one attempt", err, len(pods.Items))
		}
		pod := pods.Items[0]
		log, _ := kubectlErr("logs", "-n", ns, pod.Name, "-c", "job-client")
		if !jobCondition(job, batchv1.JobComplete) || job.Status.Succeeded != 1 || job.Status.Failed != 0 {
			var conds []string
			for _, c := range job.Status.Conditions {
				conds = append(conds, fmt.Sprintf("%s=%s (%s)", c.Type, c.Status, c.Reason))
			}
			t.Fatalf("Job: conditions %v, succeeded %d, failed %d; want Complete with its one attempt; the attempt's log: %q",
				conds, job.Status.Succeeded, job.Status.Failed, log)
		}
		if strings.TrimSpace(log) != helloWorld {
			t.Errorf("the Job's curl printed %q, want %s", log, helloWorld)
		}
		if pod.Status.Phase != corev1.PodSucceeded || !injected(&pod) {
			t.Errorf("the Job's pod: phase %s, injected %v; want Succeeded and injected", pod.Status.Phase, injected(&pod))
		}
		for _, c := range pod.Status.ContainerStatuses {
			if c.RestartCount != 0 || c.State.Terminated == nil || c.State.Terminated.ExitCode != 0 {
				t.Errorf("the Job's container %s: restarts %d, state %+v; want one run exiting 0", c.Name, c.RestartCount, c.State)
			}
		}
		t.Logf("Job complete %s after kubectl apply", time.Since(t1).Round(time.Millisecond))
		// Finished, the pod is deregistered.
		waitAgentHoldsPods(t, ctx, cs, cl, ns)
	})
}

// allowAllTo creates the intention allowing every source to reach
// service, and deletes it when the test ends (intentions outlive
// namespaces).
func allowAllTo(t *testing.T, service string) {
	t.Helper()
	if out, err := consulCLI("intention", "create", "-allow", "*", service); err != nil {
		t.Fatalf("consul intention create -allow '*' %s: %v: %s", service, err, out)
	}
	t.Cleanup(func() { _, _ = consulCLI("intention", "delete", "*", service) })
}

// upstreamJob is a meshed Job in the seed's style whose one container
// curls its explicit upstream once, the moment it starts: no retry, and
// backoffLimit 0, so the Job completes only if the proxy's upstream
// listener serves before the app starts.
const upstreamJob = `apiVersion: v1
kind: Service
metadata:
  name: job-client
spec:
  selector:
    app: job-client
  ports:
    - port: 80
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: job-client
---
apiVersion: batch/v1
kind: Job
metadata:
  name: job-client
spec:
  backoffLimit: 0
  template:
    metadata:
      labels:
        app: job-client
      annotations:
        'consul.hashicorp.com/connect-inject': 'true'
        'consul.hashicorp.com/connect-service-upstreams': 'static-server:1234'
    spec:
      restartPolicy: Never
      containers:
        - name: job-client
          image: %s
          command: ['curl', '-s', '-S', 'localhost:1234']
      serviceAccountName: job-client
`

// eagerClient is a meshed Deployment in the seed's style whose app, as it
// starts, curls its explicit upstream and then static-server through the
// transparent proxy, once each with no retry, and then idles: its log
// shows whether the proxy served before the app started.
const eagerClient = `apiVersion: v1
kind: Service
metadata:
  name: eager-client
spec:
  selector:
    app: eager-client
  ports:
    - port: 80
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: eager-client
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: eager-client
spec:
  replicas: 1
  selector:
    matchLabels:
      app: eager-client
  template:
    metadata:
      labels:
        app: eager-client
      annotations:
        'consul.hashicorp.com/connect-inject': 'true'
        'consul.hashicorp.com/connect-service-upstreams': 'static-server:1234'
    spec:
      serviceAccountName: eager-client
      terminationGracePeriodSeconds: 2
      containers:
        - name: eager-client
          image: %s
          command: ['sh', '-c', 'curl -s -S localhost:1234; curl -s -S http://static-server/; trap "exit 0" TERM; while true; do sleep 1; done']
`

// serverWithReadinessProbe is examples/mesh/static-server.yaml with an
// exec readiness probe on the app: ready unless /tmp/unhealthy exists.
func serverWithReadinessProbe(t *testing.T) string {
	t.Helper()
	b := readMeshManifest(t, "static-server.yaml")
	const at = "          ports:\n"
	if strings.Count(b, at) != 1 {
		t.Fatalf("examples/mesh/static-server.yaml: want one %q", at)
	}
	probe := `          readinessProbe:
            exec:
              command: ['sh', '-c', 'test ! -f /tmp/unhealthy']
            periodSeconds: 1
            failureThreshold: 1
`
	return writeManifest(t, strings.Replace(b, at, probe+at, 1))
}

func jobCondition(j *batchv1.Job, c batchv1.JobConditionType) bool {
	for _, cond := range j.Status.Conditions {
		if cond.Type == c && cond.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// onlyPod waits for the one pod matching selector, running with an IP.
func onlyPod(t *testing.T, ctx context.Context, cs *kubernetes.Clientset, ns, selector string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, ctx, "the one pod "+selector, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil || len(pods.Items) != 1 {
			return false, fmt.Errorf("%d pods (%v)", len(pods.Items), err)
		}
		pod = &pods.Items[0]
		return pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP != "", nil
	})
	return pod
}

// podStates describes each pod of the namespace: its UID and each
// container's ID and restart count.
func podStates(t *testing.T, ctx context.Context, cs *kubernetes.Clientset, ns string) map[string]string {
	t.Helper()
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pods.Items {
		s := string(p.UID)
		for _, c := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			s += fmt.Sprintf(" %s:%s:%d", c.Name, c.ContainerID, c.RestartCount)
		}
		out[p.Name] = s
	}
	if len(out) == 0 {
		t.Fatal("no pods")
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// nodeHTTP sends a plain HTTP GET from the node (this process) to addr
// and returns whatever comes back before the connection ends.
func nodeHTTP(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// waitAgentHoldsPods waits until the node agent's registrations for the
// namespace are exactly a service and a proxy per injected pod the API
// server has with an IP and not finished: nothing missing, no orphan.
func waitAgentHoldsPods(t *testing.T, ctx context.Context, cs *kubernetes.Clientset, cl *capi.Client, ns string) {
	t.Helper()
	var mismatch error // kept when the last try fails only because the wait is over
	waitFor(t, ctx, "the agent's registrations to be the namespace's pods", func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, cmp.Or(mismatch, err)
		}
		var want []string
		for _, p := range pods.Items {
			if injected(&p) && p.Status.PodIP != "" && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
				want = append(want, contract.ServiceID(ns, p.Name), contract.ProxyID(ns, p.Name))
			}
		}
		slices.Sort(want)
		got, err := agentRegistrations(cl, ns)
		if err != nil || !slices.Equal(got, want) {
			mismatch = fmt.Errorf("agent holds %v (%v), want %v", got, err, want)
			return false, mismatch
		}
		return true, nil
	})
}

// TestSeedChartValues: the seed's injection settings, set the way a user
// sets them, with `helm upgrade` of the chart (one upgrade for all, then
// the local cluster's values restored): connectInject.default true,
// k8sAllowNamespaces and k8sDenyNamespaces, metrics.defaultEnabled with a
// scrape port of its own. What webhook_test.go checks with the default
// values (opt-in, opt-out, a bad upstream denied) is not repeated; here:
//   - before the upgrade, enable-metrics "true" on a pod gives it the
//     prometheus.io annotations (metrics.defaultEnabled is false);
//   - an unannotated pod in an allowed namespace is injected, with the
//     prometheus.io annotations of the chart's metrics values; the seed's
//     static-server without its annotation runs injected, registered, and
//     serves its proxy's metrics on the scrape port;
//   - connect-inject "false" still opts out, enable-metrics "false" turns
//     metrics off for one pod;
//   - an unannotated pod with bad annotations is denied (the default
//     injects it), every bad value in the message kubectl prints; in a
//     namespace the webhook does not inject, the same pod is admitted;
//   - an annotated pod in a namespace both allowed and denied (deny wins)
//     or not allowed is not injected.
func TestSeedChartValues(t *testing.T) {
	requireLocalNode(t, "upgrades the release with the local cluster's values, restores them, and GETs a pod's IP from the node")
	cs := clientset(t)
	cl := consul(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	allowed := testNamespace(t, cs, "seed-allowed")
	leaveNoRegistrations(t, cs, cl, allowed)
	denied := testNamespace(t, cs, "seed-denied") // allowed too: deny wins
	other := testNamespace(t, cs, "seed-other")

	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	admit := func(ns string, pod *corev1.Pod) *corev1.Pod {
		t.Helper()
		got, err := cs.CoreV1().Pods(ns).Create(ctx, pod, dry)
		if err != nil {
			t.Fatalf("pod %s in %s: %v", pod.Name, ns, err)
		}
		return got
	}
	metrics := func(p *corev1.Pod) string {
		return fmt.Sprintf("%s %s %s", p.Annotations["prometheus.io/scrape"], p.Annotations["prometheus.io/port"], p.Annotations["prometheus.io/path"])
	}
	// Before the upgrade (metrics.defaultEnabled false): the pod's
	// annotation turns metrics on.
	if got := admit(other, pausePod("app", map[string]string{contract.Inject: "true", contract.EnableMetrics: "true",
		contract.PrometheusScrapePort: "20201"})); !injected(got) || metrics(got) != "true 20201 /metrics" {
		t.Errorf("metrics on by annotation, with the chart's default values: injected %v, prometheus.io scrape/port/path %q; want true 20201 /metrics",
			injected(got), metrics(got))
	}

	t.Cleanup(func() {
		t1 := time.Now()
		if err := lc.InstallMeshlet(context.Background()); err != nil {
			t.Errorf("restore the release: %v", err)
			return
		}
		waitWebhookRollout(t, context.Background(), cs)
		t.Logf("the local cluster's values restored, the webhook rolled, in %s", time.Since(t1).Round(time.Millisecond))
	})
	t1 := time.Now()
	if err := lc.UpgradeMeshlet(ctx, "connectInject.default=true",
		fmt.Sprintf("connectInject.k8sAllowNamespaces={%s,%s}", allowed, denied),
		fmt.Sprintf("connectInject.k8sDenyNamespaces={%s}", denied),
		"connectInject.metrics.defaultEnabled=true",
		"connectInject.metrics.defaultPrometheusScrapePort=20202"); err != nil {
		t.Fatal(err)
	}
	waitWebhookRollout(t, ctx, cs)
	t.Logf("helm upgrade and the webhook's rollout: %s", time.Since(t1).Round(time.Millisecond))

	for _, c := range []struct {
		what     string
		ns       string
		ann      map[string]string
		injected bool
		metrics  string
	}{
		{"unannotated, connectInject.default true", allowed, nil, true, "true 20202 /metrics"},
		{"opted out", allowed, map[string]string{contract.Inject: "false"}, false, "  "},
		{"metrics off by annotation", allowed, map[string]string{contract.EnableMetrics: "false"}, true, "  "},
		{"annotated, in a denied namespace (also allowed)", denied, map[string]string{contract.Inject: "true"}, false, "  "},
		{"annotated, in a namespace not allowed", other, map[string]string{contract.Inject: "true"}, false, "  "},
	} {
		got := admit(c.ns, pausePod("app", c.ann))
		if injected(got) != c.injected || metrics(got) != c.metrics {
			t.Errorf("%s: injected %v, prometheus.io scrape/port/path %q; want %v, %q", c.what, injected(got), metrics(got), c.injected, c.metrics)
		}
	}

	// Bad values on a pod that relies on the default to be injected.
	bad := func(ns string) string {
		return writeManifest(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: bad
  namespace: %s
  annotations:
    consul.hashicorp.com/connect-service-upstreams: "db:abc"
    consul.hashicorp.com/enable-metrics: "yes"
spec:
  containers:
  - name: app
    image: %s
`, ns, cluster.PauseImage))
	}
	out, err := kubectlErr("apply", "--dry-run=server", "-f", bad(allowed))
	for _, want := range []string{`admission webhook "inject.meshlet.io" denied the request`,
		`consul.hashicorp.com/connect-service-upstreams: "db:abc": port must be a number 1-65535`,
		`consul.hashicorp.com/enable-metrics: "yes": expected "true" or "false"`} {
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("kubectl apply of an unannotated pod with bad annotations in %s: %v\n%s\nwant %q", allowed, err, out, want)
		}
	}
	if out, err := kubectlErr("apply", "--dry-run=server", "-f", bad(other)); err != nil {
		t.Errorf("the same pod in %s, a namespace the webhook does not inject: %v\n%s\nwant it admitted", other, err, out)
	}

	// The seed's server without its connect-inject annotation.
	b, err := os.ReadFile(filepath.Join(lc.Root, "examples", "mesh", "static-server.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const annotation = "        'consul.hashicorp.com/connect-inject': 'true'\n"
	if strings.Count(string(b), annotation) != 1 {
		t.Fatalf("examples/mesh/static-server.yaml: want one %q", annotation)
	}
	kubectl(t, "apply", "-n", allowed, "-f", writeManifest(t, strings.Replace(string(b), annotation, "        {}\n", 1)))
	kubectl(t, "rollout", "status", "-n", allowed, "deploy/static-server", "--timeout=120s")
	server := onlyPod(t, ctx, cs, allowed, "app=static-server")
	if _, set := server.Annotations[contract.Inject]; set || !injected(server) || metrics(server) != "true 20202 /metrics" {
		t.Fatalf("the unannotated seed server: annotations %v; want injected by default, with prometheus.io scrape/port/path true 20202 /metrics", server.Annotations)
	}
	waitFor(t, ctx, "the unannotated server registered", func(context.Context) (bool, error) {
		err := catalogMatches(cl, allowed, "static-server", map[string]string{server.Name: server.Status.PodIP})
		return err == nil, err
	})
	// Where Prometheus would scrape it (from the node, as Prometheus
	// would): the proxy's own metrics, past the pod's inbound redirection.
	url := fmt.Sprintf("http://%s:20202/metrics", server.Status.PodIP)
	waitFor(t, ctx, "the proxy's metrics on the scrape port", func(context.Context) (bool, error) {
		status, body, err := hostGet(url)
		return err == nil && status == 200 && strings.Contains(body, "meshlet_proxy_connections_total"), fmt.Errorf("GET %s: %d (%v)", url, status, err)
	})
}
