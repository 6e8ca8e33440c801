package kind

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/kind/kindcluster"
)

// nodeLossBound is how long after `docker stop` or `docker kill` of a worker requests may
// still land on its instances or fail; docs/kind-offline.md says where it
// comes from (Consul's failure detection of the node's client agent, then
// the sidecars' blocking queries).
const nodeLossBound = 30 * time.Second

// TestKindNodeLoss: a 4-replica static-server spread over both workers,
// static-client on the first. Requests reach all four; the second worker
// stopped (docker stop), its instances leave Consul's healthy set and
// every request lands on the first worker's within nodeLossBound; the
// worker started again, its pods come back with new sandboxes and are
// registered again: one passing instance per pod, at its new address,
// none left over, and requests reach all four again.
//
// Twice: `docker stop` halts the node's systemd, so its Consul client
// agent leaves the cluster on SIGTERM; `docker kill` takes the node away
// at once, as a crash or a cut cable does, and Consul's failure detection
// has to notice.
func TestKindNodeLoss(t *testing.T) {
	c := openKindCluster(t)
	for _, how := range []string{"stop", "kill"} {
		t.Run(how, func(t *testing.T) { nodeLoss(t, c, how) })
	}
}

func nodeLoss(t *testing.T, c *kindcluster.Cluster, how string) {
	survivor, lost := kindcluster.Workers[0], kindcluster.Workers[1]
	ns := kindNamespace(t, c, "nodeloss-"+how)
	applyIn(t, c, ns, "static-server", spreadServer(4))
	applyIn(t, c, ns, "static-client", pinned(t, c.Root, "static-client.yaml", survivor))
	for _, d := range []string{"static-server", "static-client"} {
		mustKubectl(t, c, "-n", ns, "rollout", "status", "deployment/"+d, "--timeout=240s")
	}
	cl := consulFor(t, c, survivor)
	pods := waitCatalogMatches(t, c, cl, ns, "static-server", 4, 2*time.Minute)
	onLost := map[string]bool{}
	for name, p := range pods {
		if p.node == lost {
			onLost[name] = true
		}
	}
	if len(onLost) != 2 {
		t.Fatalf("static-server's pods %v: expected two on each worker", pods)
	}

	url := "http://" + clusterIP(t, c, ns, "static-server") + "/"
	p := startProber(t, c, ns, "static-client", "static-client", url)
	reachAll := func(what string, from time.Time) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			seen := map[string]bool{}
			for _, a := range p.answers(from) {
				if a.code == 0 {
					seen[a.body] = true
				}
			}
			all := true
			for name := range pods {
				all = all && seen[name]
			}
			if all {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: answers came from %v, expected every pod of %v", what, seen, pods)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	reachAll("before the node is lost", time.Now())

	// The lost node's instances leave the healthy set as the survivor's
	// Consul agent sees it.
	leftHealthy := make(chan time.Duration, 1)
	t0 := time.Now()
	go func() {
		for time.Since(t0) < 2*time.Minute {
			entries, _, err := cl.Health().Service("static-server", "", true, &capi.QueryOptions{AllowStale: true})
			if err == nil {
				n := 0
				for _, e := range entries {
					if onLost[e.Service.Meta[contract.MetaPodName]] {
						n++
					}
				}
				if n == 0 {
					leftHealthy <- time.Since(t0)
					return
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		close(leftHealthy)
	}()
	if out, err := exec.Command("docker", how, lost).CombinedOutput(); err != nil {
		t.Fatalf("docker %s %s: %v: %s", how, lost, err, out)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = exec.Command("docker", "start", lost).Run()
		}
	})
	stopped := time.Since(t0)
	settle := nodeLossBound + 15*time.Second
	if wait := settle - time.Since(t0); wait > 0 {
		time.Sleep(wait)
	}
	left, ok := <-leftHealthy
	var bad []answer
	var lastBad time.Duration
	all := p.answers(t0)
	for _, a := range all {
		if a.code != 0 || onLost[a.body] || pods[a.body] == (podInfo{}) {
			bad = append(bad, a)
			lastBad = a.at.Sub(t0)
		}
	}
	t.Logf("docker %s %s returned after %s; its instances left the healthy set after %s (seen: %v); "+
		"%d of %d requests in %s failed or landed on it, the last %s after the %s",
		how, lost, stopped.Round(time.Millisecond), left.Round(time.Millisecond), ok, len(bad), len(all), settle, lastBad.Round(time.Millisecond), how)
	for _, a := range bad {
		t.Logf("  %s: exit %d %q", a.at.Sub(t0).Round(time.Millisecond), a.code, a.body)
	}
	if !ok {
		t.Errorf("the instances on %s were still passing in Consul 2 min after docker %s", lost, how)
	}
	if lastBad > nodeLossBound {
		t.Errorf("a request failed or reached %s %s after docker %s, beyond the bound of %s", lost, lastBad.Round(time.Millisecond), how, nodeLossBound)
	}
	if n := len(all); n < int(settle/(400*time.Millisecond)) {
		t.Errorf("only %d requests in %s: the prober stalled", n, settle)
	}

	// The worker back: same pods, new sandboxes, registered again.
	t1 := time.Now()
	if out, err := exec.Command("docker", "start", lost).CombinedOutput(); err != nil {
		t.Fatalf("docker start %s: %v: %s", lost, err, out)
	}
	restarted = true
	mustKubectl(t, c, "wait", "node/"+lost, "--for=condition=Ready", "--timeout=180s")
	after := waitCatalogMatches(t, c, consulFor(t, c, lost), ns, "static-server", 4, 4*time.Minute)
	t.Logf("%s back: node Ready and its pods registered again after %s", lost, time.Since(t1).Round(time.Millisecond))
	for name := range onLost {
		if after[name].node != lost {
			t.Errorf("pod %s: on node %q after the restart, expected %s (the same pod)", name, after[name].node, lost)
		}
	}
	// Every agent's view: the survivor's agent too.
	if diffs := catalogMatchesPods(t, cl, after, ns, "static-server", "static-server-sidecar-proxy"); len(diffs) > 0 {
		t.Errorf("the survivor's Consul agent sees:\n%s", strings.Join(diffs, "\n"))
	}
	pods = after
	reachAll("after the restart", time.Now())
}
