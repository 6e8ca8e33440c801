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

// openKindCluster is the cluster of a plain make kind-up: the tests that
// talk plain HTTP to its Consul client agents skip on the secure one
// (make kind-up SECURE=1), where TestKindSecureSeedWalkthrough runs.
func openKindCluster(t *testing.T) *kindcluster.Cluster {
	t.Helper()
	c := kindCluster(t)
	if c.HasSecureConsul() {
		t.Skip("talks plain HTTP to Consul: this kind cluster runs the secure Consul (make kind-up SECURE=1), where TestKindSecureSeedWalkthrough runs")
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
	c := openKindCluster(t)
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
	s := deploySeed(t, c, serverNode, clientNode)
	s.waitHello("first request")
	s.checkNodes(cl)

	deny := &capi.ServiceIntentionsConfigEntry{Kind: capi.ServiceIntentions, Name: "static-server",
		Sources: []*capi.SourceIntention{{Name: "static-client", Action: capi.IntentionActionDeny}}}
	if _, _, err := cl.ConfigEntries().Set(deny, nil); err != nil {
		t.Fatalf("deny intention: %v", err)
	}
	s.requireDenied()
	if _, err := cl.ConfigEntries().Delete(capi.ServiceIntentions, "static-server", nil); err != nil {
		t.Fatalf("delete the intention: %v", err)
	}
	s.requireHello("after deleting the deny")
}

// seed is the seed's walkthrough deployed in its own namespace, its
// server pinned to one node and its client to another.
type seed struct {
	t                      *testing.T
	c                      *kindcluster.Cluster
	ns                     string
	serverNode, clientNode string
}

// deploySeed applies examples/mesh's static-server and static-client,
// pinned, in a new namespace (deleted at the test's end) and waits for
// both Deployments.
func deploySeed(t *testing.T, c *kindcluster.Cluster, serverNode, clientNode string) *seed {
	t.Helper()
	s := &seed{t: t, c: c, ns: fmt.Sprintf("seed-kind-%d", time.Now().UnixNano()%100000), serverNode: serverNode, clientNode: clientNode}
	mustKubectl(t, c, "create", "namespace", s.ns)
	t.Cleanup(func() { kubectl(t, c, "delete", "namespace", s.ns, "--wait=false") })
	t0 := time.Now()
	for _, m := range []struct{ file, node string }{{"static-server.yaml", serverNode}, {"static-client.yaml", clientNode}} {
		f := filepath.Join(t.TempDir(), m.file)
		if err := os.WriteFile(f, []byte(pinned(t, c.Root, m.file, m.node)), 0o644); err != nil {
			t.Fatal(err)
		}
		mustKubectl(t, c, "-n", s.ns, "apply", "-f", f)
	}
	for _, d := range []string{"static-server", "static-client"} {
		mustKubectl(t, c, "-n", s.ns, "rollout", "status", "deployment/"+d, "--timeout=180s")
	}
	t.Logf("both deployments ready in %s", time.Since(t0).Round(time.Millisecond))
	return s
}

// curl runs the walkthrough's curl in static-client.
func (s *seed) curl() (string, int) {
	return kubectl(s.t, s.c, "-n", s.ns, "exec", "deploy/static-client", "-c", "static-client", "--",
		"curl", "-s", "--max-time", "5", "http://static-server/")
}

// waitHello waits for the first hello world: a new Service's ClusterIP
// may not route in its first moments, and the sidecars' certificates and
// intentions arrive from Consul. Every later request must answer at once.
func (s *seed) waitHello(what string) {
	s.t.Helper()
	t1 := time.Now()
	deadline := t1.Add(90 * time.Second)
	for {
		out, code := s.curl()
		if code == 0 && strings.Contains(out, `"hello world"`) {
			break
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: curl http://static-server/ from %s to %s: exit %d: %q", what, s.clientNode, s.serverNode, code, out)
		}
		time.Sleep(time.Second)
	}
	s.t.Logf("hello world across nodes after %s", time.Since(t1).Round(time.Millisecond))
}

// requireHello: the very next request answers hello world.
func (s *seed) requireHello(what string) {
	s.t.Helper()
	if out, code := s.curl(); code != 0 || !strings.Contains(out, `"hello world"`) {
		s.t.Errorf("%s: curl exit %d (%q), expected hello world on the very next request", what, code, out)
	}
}

// requireDenied: the very next request gets an empty reply (curl exit 52).
func (s *seed) requireDenied() {
	s.t.Helper()
	if out, code := s.curl(); code != 52 {
		s.t.Errorf("after the deny: curl exit %d (%q), expected 52 on the very next request", code, out)
	}
}

// checkNodes: each instance is registered on its own node's client agent.
func (s *seed) checkNodes(cl *capi.Client) {
	s.t.Helper()
	for _, svc := range []string{"static-server", "static-client"} {
		podNode := strings.TrimSpace(mustKubectl(s.t, s.c, "-n", s.ns, "get", "pods", "-l", "app="+svc,
			"-o", "jsonpath={.items[*].spec.nodeName}"))
		entries, _, err := cl.Catalog().Service(svc, "", nil)
		if err != nil {
			s.t.Fatalf("catalog %s: %v", svc, err)
		}
		var nodes []string
		for _, e := range entries {
			if e.ServiceMeta[contract.MetaNamespace] == s.ns {
				nodes = append(nodes, e.Node)
			}
		}
		if len(nodes) != 1 || nodes[0] != podNode {
			s.t.Errorf("%s: catalog nodes %v, expected exactly its pod's node %s", svc, nodes, podNode)
		}
	}
}
