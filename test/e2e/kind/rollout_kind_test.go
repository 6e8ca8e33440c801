package kind

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/kind/kindcluster"
)

// TestKindAgentRollingUpgrade: `helm upgrade` rolls the node agents over
// every node (and the webhook) while static-client, on the second worker,
// requests static-server every 100 ms; static-server has an instance on
// each worker, so requests cross nodes and stay on one. No request fails,
// and no instance leaves Consul's passing set: the data path never goes
// through the node agent, and its restart re-registers nothing it had.
func TestKindAgentRollingUpgrade(t *testing.T) {
	c := openKindCluster(t)
	ns := kindNamespace(t, c, "agentroll")
	applyIn(t, c, ns, "static-server", spreadServer(2))
	applyIn(t, c, ns, "static-client", pinned(t, c.Root, "static-client.yaml", kindcluster.Workers[1]))
	for _, d := range []string{"static-server", "static-client"} {
		mustKubectl(t, c, "-n", ns, "rollout", "status", "deployment/"+d, "--timeout=240s")
	}
	cl := consulFor(t, c, kindcluster.Workers[0])
	pods := waitCatalogMatches(t, c, cl, ns, "static-server", 2, 2*time.Minute)
	before := agentPods(t, c)

	p := startProber(t, c, ns, "static-client", "static-client", "http://"+clusterIP(t, c, ns, "static-server")+"/")
	p.waitAnswers(t, time.Now(), 1, time.Minute)

	// Consul's view, every 200 ms while the agents roll.
	var polls, notPassing atomic.Int64
	var lastDiff atomic.Value
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			polls.Add(1)
			entries, _, err := cl.Health().Service("static-server", "", true, &capi.QueryOptions{AllowStale: true})
			n := 0
			for _, e := range entries {
				if e.Service.Meta[contract.MetaNamespace] == ns {
					n++
				}
			}
			if err != nil || n != len(pods) {
				notPassing.Add(1)
				lastDiff.Store(fmt.Sprintf("%d passing instances, err %v", n, err))
			}
		}
	}()

	t0 := time.Now()
	chart := filepath.Join(c.Root, kindcluster.MeshletChart)
	upgrade := func(level string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		_, err := c.Helm(ctx, "upgrade", kindcluster.MeshletRelease, chart, "-n", kindcluster.MeshletNamespace,
			"--reuse-values", "--set", "global.logLevel="+level, "--wait", "--timeout", "300s")
		return err
	}
	t.Cleanup(func() {
		if err := upgrade(kindLogLevel(t, c)); err != nil {
			t.Errorf("restore the release: %v", err)
		}
	})
	if err := upgrade("info"); err != nil {
		t.Fatal(err)
	}
	mustKubectl(t, c, "-n", kindcluster.MeshletNamespace, "rollout", "status", "daemonset/meshlet-agent", "--timeout=300s")
	rolled := time.Since(t0)
	for name, node := range agentPods(t, c) {
		if before[name] != "" {
			t.Errorf("node agent %s on %s was not replaced by the upgrade", name, node)
		}
	}
	// A few more seconds of requests once the last agent is ready.
	time.Sleep(5 * time.Second)
	close(stop)
	<-polled
	all := p.answers(t0)
	var failed []answer
	seen := map[string]int{}
	for _, a := range all {
		if a.code != 0 {
			failed = append(failed, a)
			continue
		}
		seen[a.body]++
	}
	t.Logf("node agents rolled over %d nodes in %s; %d requests, %d failed; answers per pod %v; Consul polled %d times, %d with an instance not passing",
		len(before), rolled.Round(time.Millisecond), len(all), len(failed), seen, polls.Load(), notPassing.Load())
	for _, a := range failed {
		t.Errorf("request %s after the upgrade began: exit %d %q", a.at.Sub(t0).Round(time.Millisecond), a.code, a.body)
	}
	if len(all) < int(rolled/(400*time.Millisecond)) {
		t.Errorf("only %d requests in %s: the prober stalled", len(all), rolled)
	}
	for name := range pods {
		if seen[name] == 0 {
			t.Errorf("no request reached pod %s (on %s) during the upgrade", name, pods[name].node)
		}
	}
	if n := notPassing.Load(); n > 0 {
		t.Errorf("%d of %d polls saw static-server with fewer passing instances than pods; last: %v", n, polls.Load(), lastDiff.Load())
	}
}

// agentPods maps the node agents' pod names to their nodes; a replaced
// pod still terminating is not counted.
func agentPods(t *testing.T, c *kindcluster.Cluster) map[string]string {
	t.Helper()
	out := mustKubectl(t, c, "-n", kindcluster.MeshletNamespace, "get", "pods", "-l", "app=meshlet-agent",
		"-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.metadata.deletionTimestamp}{"\n"}{end}`)
	pods := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			pods[f[0]] = f[1]
		}
	}
	if len(pods) != 3 {
		t.Fatalf("node agents %v: expected one on each of the 3 nodes", pods)
	}
	return pods
}

// kindLogLevel is the node agents' log level make kind-up installs
// (consul/meshlet-values.yaml), which the upgrade test restores.
func kindLogLevel(t *testing.T, c *kindcluster.Cluster) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Root, kindcluster.MeshletValues))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Global struct {
			LogLevel string `json:"logLevel"`
		} `json:"global"`
	}
	if err := sigsyaml.Unmarshal(b, &v); err != nil || v.Global.LogLevel == "" {
		t.Fatalf("%s: no global.logLevel (%v)", kindcluster.MeshletValues, err)
	}
	return v.Global.LogLevel
}
