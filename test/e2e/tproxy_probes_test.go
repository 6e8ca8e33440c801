package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/webhook"
)

// probedManifest is a meshed app as users write it (only connect-inject)
// with kubelet probes of each kind the webhook handles differently: an
// httpGet readiness probe on a named port, an httpGet liveness probe on
// a number, and an exec startup probe. http-echo (the static-server
// image) answers 200 on every path and cannot be told to fail, so the
// app is busybox's httpd from the static-client image serving files of
// /tmp/www: removing a file makes its path answer 404.
const probedManifest = `apiVersion: v1
kind: Service
metadata:
  name: probed
spec:
  selector: {app: probed}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: probed
spec:
  replicas: 1
  selector:
    matchLabels: {app: probed}
  template:
    metadata:
      labels: {app: probed}
      annotations:
        consul.hashicorp.com/connect-inject: "true"
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: %s
        imagePullPolicy: %s
        command: [sh, -c, 'mkdir -p /tmp/www && echo ready > /tmp/www/ready && echo live > /tmp/www/live && exec httpd -f -p 8080 -h /tmp/www']
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /ready, port: http}
          periodSeconds: 1
          failureThreshold: 1
        livenessProbe:
          httpGet: {path: /live, port: 8080}
          periodSeconds: 1
          failureThreshold: 3
        startupProbe:
          exec:
            command: [sh, -c, 'test ! -f /tmp/unhealthy']
          periodSeconds: 1
`

// TestTransparentProxyProbes: kubelet's HTTP probes of a transparent-proxy
// pod go through `meshlet proxy`'s expose listeners. The webhook moved
// them to 20300 (liveness) and 20400 (readiness) and left the exec probe
// alone; the node agent registered the expose paths on the proxy; the
// pod turns Ready (kubelet → expose listener → the app's path, past the
// pod's inbound redirection); the app answering 404 on the readiness path
// turns the pod NotReady and its Consul check critical, and back; a 404
// on the liveness path gets the app restarted.
func TestTransparentProxyProbes(t *testing.T) {
	requireLocalNode(t, "GETs the pod's ports from the node, as kubelet does")
	cs := clientset(t)
	ns := testNamespace(t, cs, "tproxy-probes")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl := consul(t)
	t0 := time.Now()
	kubectl(t, "apply", "-n", ns, "-f", writeManifest(t, fmt.Sprintf(probedManifest, suite.Images.StaticClient, pullPolicy())))

	// What the webhook did, on the pod the API server stored.
	var pod corev1.Pod
	waitFor(t, ctx, "the pod of Deployment probed", func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=probed"})
		if err != nil || len(pods.Items) != 1 {
			return false, err
		}
		pod = pods.Items[0]
		return true, nil
	})
	if !injected(&pod) {
		t.Fatalf("pod %s not injected: annotations %v", pod.Name, pod.Annotations)
	}
	checkPlacement(t, &pod)
	app := container(t, &pod, "app")
	for _, p := range []struct {
		kind  string
		probe *corev1.Probe
		port  int
		path  string
	}{{"liveness", app.LivenessProbe, 20300, "/live"}, {"readiness", app.ReadinessProbe, 20400, "/ready"}} {
		if g := p.probe.HTTPGet; g == nil || g.Port.IntValue() != p.port || g.Path != p.path || g.Host != "" {
			t.Errorf("%s probe %+v: want httpGet %s on the proxy's expose port %d", p.kind, p.probe.ProbeHandler, p.path, p.port)
		}
	}
	if s := app.StartupProbe; s.HTTPGet != nil || s.Exec == nil || !slices.Equal(s.Exec.Command, []string{"sh", "-c", "test ! -f /tmp/unhealthy"}) {
		t.Errorf("exec startup probe changed: %+v", s.ProbeHandler)
	}
	reg, err := contract.DecodeRegistration(pod.Annotations[contract.RegistrationKey])
	if err != nil {
		t.Fatal(err)
	}
	want := []contract.ExposePath{{ListenerPort: 20300, Path: "/live", LocalPathPort: 8080}, {ListenerPort: 20400, Path: "/ready", LocalPathPort: 8080}}
	if !slices.Equal(reg.ExposePaths, want) {
		t.Errorf("registration's expose paths %+v, want %+v", reg.ExposePaths, want)
	}
	if t.Failed() {
		t.FailNow()
	}

	// The node agent registers the expose paths on the proxy, and the
	// pod turns Ready: kubelet's probes reach the app through them.
	waitCatalogFollows(t, ctx, cs, cl, ns, "probed", 1)
	entries, _, err := cl.Catalog().Service("probed-sidecar-proxy", "", nil)
	if err != nil || len(entries) != 1 || entries[0].ServiceProxy == nil {
		t.Fatalf("the proxy's registration: %v, %d entries", err, len(entries))
	}
	var exposed []contract.ExposePath
	for _, e := range entries[0].ServiceProxy.Expose.Paths {
		exposed = append(exposed, contract.ExposePath{ListenerPort: e.ListenerPort, Path: e.Path, LocalPathPort: e.LocalPathPort})
	}
	if !slices.Equal(exposed, want) {
		t.Fatalf("the proxy's registered expose paths %+v, want %+v", exposed, want)
	}
	name := pod.Name
	unready := func(p *corev1.Pod) bool { return !podReady(p) }
	checkIs := func(what, status string, proxies int) {
		t.Helper()
		waitFor(t, ctx, what, func(context.Context) (bool, error) {
			st, err := checkStatus(cl, ns, name)
			if n := passingProxies(t, cl, "probed"); st != status || n != proxies {
				return false, fmt.Errorf("check %q (%v), %d passing proxies; want %s, %d", st, err, n, status, proxies)
			}
			return true, nil
		})
	}
	waitPodState(t, ctx, cs, ns, name, "Ready", podReady)
	checkIs("the check passing", capi.HealthPassing, 1)
	t.Logf("pod Ready and its check passing %s after kubectl apply", time.Since(t0).Round(time.Millisecond))

	// What kubelet sees from the node: each expose listener serves its
	// own path of the app and nothing else, and the app's port itself is
	// redirected to the proxy's mTLS listener (no HTTP answer), which is
	// why the probes had to move.
	ip := waitPodRunning(t, ctx, cs, ns, name).Status.PodIP
	for _, c := range []struct {
		url    string
		status int
		body   string
	}{
		{"http://" + ip + ":20400/ready", 200, "ready"},
		{"http://" + ip + ":20300/live", 200, "live"},
		{"http://" + ip + ":20400/live", 404, ""},
		{"http://" + ip + ":20300/", 404, ""},
		{"http://" + ip + ":8080/ready", 0, ""},
	} {
		status, body, err := hostGet(c.url)
		switch {
		case c.status == 0 && err == nil:
			t.Errorf("GET %s from the node: HTTP %d %q, want no HTTP answer (the app's port redirected to the proxy's TLS listener)", c.url, status, body)
		case c.status != 0 && (err != nil || status != c.status || !strings.Contains(body, c.body)):
			t.Errorf("GET %s from the node: %d %q (%v), want %d %q", c.url, status, body, err, c.status, c.body)
		}
	}

	// Readiness: the app answers 404 on /ready, through the expose
	// listener; kubelet turns the pod unready and the node agent the check
	// critical; the file back, both recover.
	t1 := time.Now()
	kubectl(t, "exec", "-n", ns, name, "-c", "app", "--", "rm", "/tmp/www/ready")
	waitPodState(t, ctx, cs, ns, name, "NotReady after /ready answers 404", unready)
	if status, body, err := hostGet("http://" + ip + ":20400/ready"); err != nil || status != 404 {
		t.Errorf("GET /ready on the readiness expose port: %d %q (%v), want the app's 404", status, body, err)
	}
	checkIs("the check critical", capi.HealthCritical, 0)
	t.Logf("NotReady and critical %s after /ready turned 404", time.Since(t1).Round(time.Millisecond))
	t1 = time.Now()
	kubectl(t, "exec", "-n", ns, name, "-c", "app", "--", "sh", "-c", "echo ready > /tmp/www/ready")
	waitPodState(t, ctx, cs, ns, name, "Ready again", podReady)
	checkIs("the check passing again", capi.HealthPassing, 1)
	t.Logf("Ready and passing %s after /ready answered 200 again", time.Since(t1).Round(time.Millisecond))
	if got := containerStatus(t, cs, ns, name, "app"); got.RestartCount != 0 {
		t.Fatalf("app restarted %d times before its liveness path failed", got.RestartCount)
	}

	// Liveness: a 404 on /live, through the other expose listener, gets
	// the app container restarted (its command serves /live again).
	t1 = time.Now()
	kubectl(t, "exec", "-n", ns, name, "-c", "app", "--", "rm", "/tmp/www/live")
	waitPodState(t, ctx, cs, ns, name, "the app restarted by its liveness probe, and Ready", func(p *corev1.Pod) bool {
		for _, c := range p.Status.ContainerStatuses {
			if c.Name == "app" {
				return c.RestartCount == 1 && podReady(p)
			}
		}
		return false
	})
	checkIs("the check passing after the app's restart", capi.HealthPassing, 1)
	t.Logf("app restarted and Ready %s after /live turned 404", time.Since(t1).Round(time.Millisecond))
	if got := containerStatus(t, cs, ns, name, sidecarName()); got.RestartCount != 0 {
		t.Errorf("%s restarted %d times", sidecarName(), got.RestartCount)
	}
}

// containerStatus is the status of a pod's container or init container.
func containerStatus(t *testing.T, cs *kubernetes.Clientset, ns, pod, name string) corev1.ContainerStatus {
	t.Helper()
	p, err := cs.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("pod %s: no status of container %s", pod, name)
	return corev1.ContainerStatus{}
}

// TestProxyRestart: the server pod's proxy (container meshlet-proxy)
// killed (SIGKILL, a crash) with a connection open through it and a pod
// outside the mesh calling the app's port. The open connection is closed, not left hanging; the
// outsider is refused while the proxy is down (the pod's redirection
// stays, the app is never reached around the proxy); kubelet restarts the
// native sidecar and `curl http://static-server/` answers again within
// 30 s; Consul still holds the same one registration.
func TestProxyRestart(t *testing.T) {
	requireDataPlane(t, webhook.DataPlaneMeshlet)
	requireLocalNode(t, "kills the proxy by its PID on the node")
	cs := clientset(t)
	ns := testNamespace(t, cs, "proxy-restart")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cl := consul(t)
	// The seed's client takes its 30 s grace period to stop: its
	// registrations must not outlive the test.
	leaveNoRegistrations(t, cs, cl, ns)
	kubectl(t, "apply", "-n", ns, "-f", meshManifest(t, "static-server.yaml"), "-f", meshManifest(t, "static-client.yaml"))
	outsider := createPod(t, cs, ns, "outsider", nil, corev1.Container{Name: "static-client", Image: suite.Images.StaticClient,
		ImagePullPolicy: pullPolicy(), Command: []string{"sleep", "3600"}})
	kubectl(t, "rollout", "status", "-n", ns, "deploy/static-server", "deploy/static-client", "--timeout=180s")
	waitPodRunning(t, ctx, cs, ns, outsider.Name)
	const client = "deploy/static-client"
	waitCurl(t, ctx, "hello world through the mesh", ns, client, "http://static-server/", "hello world")
	var server string
	var serverIP string
	for p, ip := range waitCatalogFollows(t, ctx, cs, cl, ns, "static-server", 1) {
		server, serverIP = p, ip
	}
	waitFor(t, ctx, "the server's check passing", func(context.Context) (bool, error) {
		st, err := checkStatus(cl, ns, server)
		return st == capi.HealthPassing, err
	})
	before := registrations(t, cl, "static-server")

	sidecar := containerStatus(t, cs, ns, server, "meshlet-proxy")
	appBefore := containerStatus(t, cs, ns, server, "static-server")
	pid := proxyPID(t, sidecar.ContainerID)

	// A connection through both proxies, held open after its first answer
	// (nc's input stays open; nc exits when the connection is closed).
	conn := &lineLog{}
	startHostProcessTee(t, conn, tools.kubectl, "--kubeconfig", suite.Kubeconfig, "exec", "-n", ns, client, "-c", "static-client",
		"--", "sh", "-c", `{ printf 'GET / HTTP/1.1\r\nHost: static-server\r\n\r\n'; sleep 120; } | { nc static-server 80; echo "nc exit $?"; }`)
	waitFor(t, ctx, "the open connection's first answer", func(context.Context) (bool, error) {
		return conn.find("hello world") != nil, nil
	})
	// A pod outside the mesh calling the app's port in a loop: each
	// attempt's curl exit code and body.
	outside := &lineLog{}
	startHostProcessTee(t, outside, tools.kubectl, "--kubeconfig", suite.Kubeconfig, "exec", "-n", ns, "outsider", "-c", "static-client",
		"--", "sh", "-c", `i=0; while [ $i -lt 3000 ] && [ ! -e /tmp/stop ]; do b=$(curl -s -m 1 http://`+serverIP+`:8080/); echo "rc=$? body=$b"; i=$((i+1)); done; echo loop done`)
	waitFor(t, ctx, "the outsider's first attempt", func(context.Context) (bool, error) {
		return outside.find("rc=") != nil, nil
	})

	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill meshlet proxy (pid %d): %v", pid, err)
	}
	// While it is down, the rules stay in the pod's netns.
	if err := redirected(t, ctx, waitPodRunning(t, ctx, cs, ns, server)); err != nil {
		t.Errorf("the server pod's redirection after its proxy died: %v", err)
	}
	bounded, cancelBounded := context.WithTimeout(ctx, 30*time.Second)
	defer cancelBounded()
	waitCurl(t, bounded, "hello world again within 30 s of the kill", ns, client, "http://static-server/", "hello world")
	gap := time.Since(killed)

	// The open connection was closed when its proxy died.
	waitFor(t, bounded, "the open connection to be closed", func(context.Context) (bool, error) {
		return conn.find("nc exit") != nil, nil
	})
	closed := conn.find("nc exit").at.Sub(killed)
	if closed > 10*time.Second {
		t.Errorf("the open connection ended %s after the proxy died, want within 10 s", closed)
	}

	// The outsider never reached the app, and was refused while the
	// proxy was down (an accept by the TLS listener is an empty reply or
	// a reset: 52, 56).
	kubectl(t, "exec", "-n", ns, "outsider", "-c", "static-client", "--", "touch", "/tmp/stop")
	waitFor(t, ctx, "the outsider's loop to stop", func(context.Context) (bool, error) {
		return outside.find("loop done") != nil, nil
	})
	refused, attempts := 0, 0
	var firstRefused, lastRefused time.Duration
	for _, l := range outside.snapshot() {
		if !strings.HasPrefix(l.text, "rc=") {
			continue
		}
		attempts++
		rc, body, _ := strings.Cut(strings.TrimPrefix(l.text, "rc="), " ")
		switch {
		case rc == "7":
			if refused == 0 {
				firstRefused = l.at.Sub(killed)
			}
			lastRefused = l.at.Sub(killed)
			refused++
		case rc == "0" || strings.Contains(body, "hello world"):
			t.Errorf("a pod outside the mesh reached the server's app around its proxy: %q", l.text)
		case rc != "52" && rc != "56" && rc != "28":
			t.Errorf("outsider attempt: %q, want curl exit 7 (refused), 52 or 56 (the proxy's listener), 28", l.text)
		}
	}
	if refused == 0 {
		t.Errorf("no outsider attempt (of %d) was refused: none ran while the proxy was down", attempts)
	}

	// kubelet restarted the sidecar; the app itself did not restart.
	after := containerStatus(t, cs, ns, server, "meshlet-proxy")
	if after.RestartCount != sidecar.RestartCount+1 || after.ContainerID == sidecar.ContainerID || !after.Ready {
		t.Errorf("meshlet-proxy after the kill: restarts %d (before %d), container %s (before %s), ready %v; want one restart",
			after.RestartCount, sidecar.RestartCount, after.ContainerID, sidecar.ContainerID, after.Ready)
	}
	if app := containerStatus(t, cs, ns, server, "static-server"); app.RestartCount != appBefore.RestartCount || app.ContainerID != appBefore.ContainerID {
		t.Errorf("the app container restarted with its proxy: %+v", app)
	}
	// The same one registration: no duplicate, not re-created.
	waitFor(t, ctx, "the server's check passing again", func(context.Context) (bool, error) {
		st, err := checkStatus(cl, ns, server)
		return st == capi.HealthPassing, err
	})
	if err := catalogMatches(cl, ns, "static-server", map[string]string{server: serverIP}); err != nil {
		t.Error(err)
	}
	if now := registrations(t, cl, "static-server"); !slices.Equal(now, before) {
		t.Errorf("registrations after the proxy restart:\n%s\nbefore:\n%s", strings.Join(now, "\n"), strings.Join(before, "\n"))
	}
	t.Logf("proxy killed: outsider refused from %s to %s after (%d of %d attempts), open connection closed after %s, "+
		"sidecar restarted (started %s), hello world again after %s",
		firstRefused.Round(time.Millisecond), lastRefused.Round(time.Millisecond), refused, attempts, closed.Round(time.Millisecond),
		after.State.Running.StartedAt.Format(time.RFC3339), gap.Round(time.Millisecond))
}

// registrations describes the catalog's instances of svc and its sidecar
// proxy: ID, address, port and the index that created them.
func registrations(t *testing.T, cl *capi.Client, svc string) []string {
	t.Helper()
	var out []string
	for _, name := range []string{svc, svc + "-sidecar-proxy"} {
		entries, _, err := cl.Catalog().Service(name, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			out = append(out, fmt.Sprintf("%s %s %s:%d created at index %d", e.ServiceName, e.ServiceID, e.ServiceAddress, e.ServicePort, e.CreateIndex))
		}
	}
	return out
}

// proxyPID is the host PID of the proxy in the container (a
// containerd://<ID> from the pod's status): the one process whose cgroup
// path names the container's ID (containerd puts each container in <pod
// cgroup>/<container ID>).
func proxyPID(t *testing.T, containerID string) int {
	t.Helper()
	id, ok := strings.CutPrefix(containerID, "containerd://")
	if !ok || len(id) != 64 {
		t.Fatalf("container ID %q: want containerd://<64 hex digits>", containerID)
	}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil && strings.Contains(string(cg), id) {
			pids = append(pids, pid)
		}
	}
	if len(pids) != 1 {
		t.Fatalf("container %s: processes %v, want exactly one", id[:12], pids)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pids[0]))
	args := strings.Split(string(cmdline), "\x00")
	if err != nil || !(args[0] == "/meshlet-proxy" || len(args) > 1 && args[0] == "/meshlet" && args[1] == "proxy") {
		t.Fatalf("pid %d in container %s runs %q (%v), want /meshlet-proxy or /meshlet proxy", pids[0], id[:12], cmdline, err)
	}
	return pids[0]
}

// lineLog keeps each line written to it with the time it arrived.
type lineLog struct {
	mu    sync.Mutex
	part  string
	lines []timedLine
}

type timedLine struct {
	at   time.Time
	text string
}

func (l *lineLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	rest := l.part + string(b)
	for {
		line, more, ok := strings.Cut(rest, "\n")
		if !ok {
			break
		}
		l.lines = append(l.lines, timedLine{now, strings.TrimSuffix(line, "\r")})
		rest = more
	}
	l.part = rest
	return len(b), nil
}

func (l *lineLog) snapshot() []timedLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

// find is the first line containing s, or nil.
func (l *lineLog) find(s string) *timedLine {
	for _, line := range l.snapshot() {
		if strings.Contains(line.text, s) {
			return &line
		}
	}
	return nil
}
