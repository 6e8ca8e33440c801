package kind

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/kind/kindcluster"
)

// answer is one request of a prober: when its answer reached the test,
// curl's exit code and the body (the answering pod's name).
type answer struct {
	at   time.Time
	code int
	body string
}

// prober requests a URL every 100 ms from a pod, in a shell loop streamed
// back by kubectl exec; each answer is timestamped as it arrives.
type prober struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	got  []answer
	done chan struct{}
}

// startProber starts the loop in deployment deploy's container container.
// curl's --max-time (2 s) bounds each request, so a request the mesh
// cannot carry is a failure, never a wait.
func startProber(t *testing.T, c *kindcluster.Cluster, ns, deploy, container, url string) *prober {
	t.Helper()
	loop := `while :; do b=$(curl -s --max-time 2 ` + url + `); echo "$? $b"; sleep 0.1; done`
	cmd := exec.Command(filepath.Join(c.Root, "bin", "kubectl"), "--kubeconfig", c.Kubeconfig(),
		"-n", ns, "exec", "deploy/"+deploy, "-c", container, "--", "sh", "-c", loop)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the prober: %v", err)
	}
	p := &prober{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			code, body, _ := strings.Cut(sc.Text(), " ")
			n, err := strconv.Atoi(code)
			if err != nil {
				n = -1
			}
			p.mu.Lock()
			p.got = append(p.got, answer{at: time.Now(), code: n, body: strings.TrimSpace(body)})
			p.mu.Unlock()
		}
	}()
	t.Cleanup(p.stop)
	return p
}

// stop ends the loop (kubectl exec killed by its PID closes the stream).
func (p *prober) stop() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
	<-p.done
}

// answers are those that arrived since from.
func (p *prober) answers(from time.Time) []answer {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []answer
	for _, a := range p.got {
		if !a.at.Before(from) {
			out = append(out, a)
		}
	}
	return out
}

// waitAnswers waits until n answers arrived since from.
func (p *prober) waitAnswers(t *testing.T, from time.Time, n int, within time.Duration) []answer {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := p.answers(from)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the prober gave %d answers in %s, expected %d", len(got), within, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// spreadServer is a Service static-server and a Deployment of replicas
// http-echo pods, each answering its own pod name, spread evenly over the
// workers (the control plane is tainted and not counted).
func spreadServer(replicas int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: static-server}
spec:
  selector: {app: static-server}
  ports: [{protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: static-server}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: static-server}
spec:
  replicas: %d
  selector: {matchLabels: {app: static-server}}
  template:
    metadata:
      labels: {app: static-server}
      annotations: {consul.hashicorp.com/connect-inject: "true"}
    spec:
      serviceAccountName: static-server
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          nodeTaintsPolicy: Honor
          labelSelector: {matchLabels: {app: static-server}}
      containers:
        - name: static-server
          image: localhost/meshlet/static-server:dev
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          args: [-text=$(POD_NAME), -listen=:8080]
          ports: [{containerPort: 8080, name: http}]
`, replicas)
}

// applyIn applies a manifest in namespace ns.
func applyIn(t *testing.T, c *kindcluster.Cluster, ns, name, manifest string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	mustKubectl(t, c, "-n", ns, "apply", "-f", f)
}

// kindNamespace creates a namespace for one test, deleted after it.
func kindNamespace(t *testing.T, c *kindcluster.Cluster, prefix string) string {
	t.Helper()
	ns := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%100000)
	mustKubectl(t, c, "create", "namespace", ns)
	t.Cleanup(func() { kubectl(t, c, "delete", "namespace", ns, "--wait=false") })
	return ns
}

// podsByNode maps each Running pod of app in ns to its node and IP.
type podInfo struct{ node, ip string }

func podsOf(t *testing.T, c *kindcluster.Cluster, ns, app string) map[string]podInfo {
	t.Helper()
	out := mustKubectl(t, c, "-n", ns, "get", "pods", "-l", "app="+app, "--field-selector=status.phase=Running",
		"-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{"\n"}{end}`)
	pods := map[string]podInfo{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 3 {
			pods[f[0]] = podInfo{node: f[1], ip: f[2]}
		}
	}
	return pods
}

// consulFor is a client of a node's Consul client agent.
func consulFor(t *testing.T, c *kindcluster.Cluster, node string) *capi.Client {
	t.Helper()
	ip, err := c.NodeIP(context.Background(), node)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := capi.NewClient(&capi.Config{Address: fmt.Sprintf("%s:%d", ip, kindcluster.ConsulHTTPPort)})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// catalogMatchesPods says how Consul's catalog differs from what meshlet
// should have registered for namespace ns: for each of the services, one
// passing instance per Running, Ready pod (its IP, its node), no other.
// Empty when they are equal.
func catalogMatchesPods(t *testing.T, cl *capi.Client, pods map[string]podInfo, ns string, services ...string) []string {
	t.Helper()
	var diffs []string
	for _, svc := range services {
		entries, _, err := cl.Health().Service(svc, "", false, nil)
		if err != nil {
			return []string{fmt.Sprintf("health of %s: %v", svc, err)}
		}
		seen := map[string]int{}
		for _, e := range entries {
			if e.Service.Meta[contract.MetaNamespace] != ns {
				continue
			}
			pod := e.Service.Meta[contract.MetaPodName]
			seen[pod]++
			want, ok := pods[pod]
			switch {
			case !ok:
				diffs = append(diffs, fmt.Sprintf("%s: instance %s of pod %s on node %s, which is not a running pod (orphan)", svc, e.Service.ID, pod, e.Node.Node))
			case e.Node.Node != want.node || e.Service.Address != want.ip:
				diffs = append(diffs, fmt.Sprintf("%s: instance %s at %s on node %s, but pod %s is %s on %s", svc, e.Service.ID, e.Service.Address, e.Node.Node, pod, want.ip, want.node))
			case e.Checks.AggregatedStatus() != capi.HealthPassing:
				diffs = append(diffs, fmt.Sprintf("%s: instance %s of pod %s is %s", svc, e.Service.ID, pod, e.Checks.AggregatedStatus()))
			}
		}
		for pod := range pods {
			switch seen[pod] {
			case 1:
			case 0:
				diffs = append(diffs, fmt.Sprintf("%s: pod %s has no instance (missing)", svc, pod))
			default:
				diffs = append(diffs, fmt.Sprintf("%s: pod %s has %d instances (duplicates)", svc, pod, seen[pod]))
			}
		}
	}
	slices.Sort(diffs)
	return diffs
}

// waitCatalogMatches waits until the catalog is what the pods say.
func waitCatalogMatches(t *testing.T, c *kindcluster.Cluster, cl *capi.Client, ns, app string, n int, within time.Duration) map[string]podInfo {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		pods := podsOf(t, c, ns, app)
		diffs := catalogMatchesPods(t, cl, pods, ns, app, app+"-sidecar-proxy")
		if len(pods) == n && len(diffs) == 0 {
			return pods
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %d running pods of %s (expected %d); the catalog differs:\n%s", within, len(pods), app, n, strings.Join(diffs, "\n"))
		}
		time.Sleep(time.Second)
	}
}

// clusterIP is a Service's ClusterIP. The probes use it rather than the
// name: cluster DNS has replicas on the nodes the tests stop, and what is
// measured is the mesh, not the resolver's failover.
func clusterIP(t *testing.T, c *kindcluster.Cluster, ns, svc string) string {
	t.Helper()
	ip := strings.TrimSpace(mustKubectl(t, c, "-n", ns, "get", "service", svc, "-o", "jsonpath={.spec.clusterIP}"))
	if ip == "" {
		t.Fatalf("service %s/%s has no ClusterIP", ns, svc)
	}
	return ip
}
