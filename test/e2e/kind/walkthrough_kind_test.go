package kind

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/kind/kindcluster"
)

// kindCluster is the cluster of make kind-up, with Consul and meshlet on
// it; a checkout without one has nothing to run these tests against.
func kindCluster(t *testing.T) *kindcluster.Cluster {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	c := kindcluster.New(root)
	if _, err := os.Stat(c.Kubeconfig()); err != nil {
		t.Skipf("no kind cluster (%v): make kind-up first", err)
	}
	return c
}

// kubectl runs bin/kubectl against the kind cluster and returns its
// combined output and exit code.
func kubectl(t *testing.T, c *kindcluster.Cluster, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(c.Root, "bin", "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig()}, args...)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return string(out), 0
}

func mustKubectl(t *testing.T, c *kindcluster.Cluster, args ...string) string {
	t.Helper()
	out, code := kubectl(t, c, args...)
	if code != 0 {
		t.Fatalf("kubectl %s: exit %d: %s", strings.Join(args, " "), code, out)
	}
	return out
}

// pinned is the seed's manifest with its Deployment pinned to node.
func pinned(t *testing.T, root, file, node string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "examples", "mesh", file))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	const spec = "    spec:\n      containers:"
	if strings.Count(s, spec) != 1 {
		t.Fatalf("%s: expected one pod spec (%q) to pin", file, spec)
	}
	return strings.Replace(s, spec, "    spec:\n      nodeName: "+node+"\n      containers:", 1)
}

// TestKindSeedWalkthroughAcrossNodes runs the seed's walkthrough with
// static-server on one worker and static-client on the other, both ways
// round: hello world across nodes, a deny intention makes the very next
// request exit 52, deleting it brings hello world back; each instance is
// registered on its own node's Consul client agent.
func TestKindSeedWalkthroughAcrossNodes(t *testing.T) {
	c := kindCluster(t)
	w1, w2 := kindcluster.Workers[0], kindcluster.Workers[1]
	t.Run("server-on-"+w1, func(t *testing.T) { seedAcross(t, c, w1, w2) })
	t.Run("server-on-"+w2, func(t *testing.T) { seedAcross(t, c, w2, w1) })
}

func seedAcross(t *testing.T, c *kindcluster.Cluster, serverNode, clientNode string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ip, err := c.NodeIP(ctx, serverNode)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := capi.NewClient(&capi.Config{Address: fmt.Sprintf("%s:%d", ip, kindcluster.ConsulHTTPPort)})
	if err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("seed-kind-%d", time.Now().UnixNano()%100000)
	mustKubectl(t, c, "create", "namespace", ns)
	t.Cleanup(func() { kubectl(t, c, "delete", "namespace", ns, "--wait=false") })

	t0 := time.Now()
	for _, m := range []struct{ file, node string }{{"static-server.yaml", serverNode}, {"static-client.yaml", clientNode}} {
		f := filepath.Join(t.TempDir(), m.file)
		if err := os.WriteFile(f, []byte(pinned(t, c.Root, m.file, m.node)), 0o644); err != nil {
			t.Fatal(err)
		}
		mustKubectl(t, c, "-n", ns, "apply", "-f", f)
	}
	for _, d := range []string{"static-server", "static-client"} {
		mustKubectl(t, c, "-n", ns, "rollout", "status", "deployment/"+d, "--timeout=180s")
	}
	t.Logf("both deployments ready in %s", time.Since(t0).Round(time.Millisecond))

	curl := func() (string, int) {
		return kubectl(t, c, "-n", ns, "exec", "deploy/static-client", "-c", "static-client", "--",
			"curl", "-s", "--max-time", "5", "http://static-server/")
	}
	// A new Service's ClusterIP may not route in its first moments, and
	// the sidecars' certificates and intentions arrive from Consul: wait
	// for the first answer, then require every later one.
	waitHello := func(what string) {
		deadline := time.Now().Add(90 * time.Second)
		for {
			out, code := curl()
			if code == 0 && strings.Contains(out, `"hello world"`) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: curl http://static-server/ from %s to %s: exit %d: %q", what, clientNode, serverNode, code, out)
			}
			time.Sleep(time.Second)
		}
	}
	t1 := time.Now()
	waitHello("first request")
	t.Logf("hello world across nodes after %s", time.Since(t1).Round(time.Millisecond))

	// Each instance is registered on its own node's client agent.
	for _, svc := range []string{"static-server", "static-client"} {
		podNode := strings.TrimSpace(mustKubectl(t, c, "-n", ns, "get", "pods", "-l", "app="+svc,
			"-o", "jsonpath={.items[*].spec.nodeName}"))
		entries, _, err := cl.Catalog().Service(svc, "", nil)
		if err != nil {
			t.Fatalf("catalog %s: %v", svc, err)
		}
		var nodes []string
		for _, e := range entries {
			if e.ServiceMeta[contract.MetaNamespace] == ns {
				nodes = append(nodes, e.Node)
			}
		}
		if len(nodes) != 1 || nodes[0] != podNode {
			t.Errorf("%s: catalog nodes %v, expected exactly its pod's node %s", svc, nodes, podNode)
		}
	}

	deny := &capi.ServiceIntentionsConfigEntry{Kind: capi.ServiceIntentions, Name: "static-server",
		Sources: []*capi.SourceIntention{{Name: "static-client", Action: capi.IntentionActionDeny}}}
	if _, _, err := cl.ConfigEntries().Set(deny, nil); err != nil {
		t.Fatalf("deny intention: %v", err)
	}
	if out, code := curl(); code != 52 {
		t.Errorf("after the deny: curl exit %d (%q), expected 52 on the very next request", code, out)
	}
	if _, err := cl.ConfigEntries().Delete(capi.ServiceIntentions, "static-server", nil); err != nil {
		t.Fatalf("delete the intention: %v", err)
	}
	if out, code := curl(); code != 0 || !strings.Contains(out, `"hello world"`) {
		t.Errorf("after deleting the deny: curl exit %d (%q), expected hello world on the very next request", code, out)
	}
}
