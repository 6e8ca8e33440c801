package kind

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/e2e/kind/kindcluster"
)

// nodeConflist reads kube-router's conflist on a node: the file and its
// plugins' types.
func nodeConflist(t *testing.T, node string) (map[string]any, []string) {
	t.Helper()
	b, err := exec.Command("docker", "exec", node, "cat", kubeRouterConflist).Output()
	if err != nil {
		t.Fatalf("%s: cat %s: %v", node, kubeRouterConflist, err)
	}
	var conf map[string]any
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatalf("%s: %s: %v: %s", node, kubeRouterConflist, err, b)
	}
	var types []string
	plugins, _ := conf["plugins"].([]any)
	for _, p := range plugins {
		m, _ := p.(map[string]any)
		typ, _ := m["type"].(string)
		types = append(types, typ)
	}
	return conf, types
}

var chained = []string{"bridge", "portmap", "meshlet-cni"}

// waitChained waits until the node's conflist ends with meshlet-cni again
// and says how long that took.
func waitChained(t *testing.T, node, what string, within time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		_, types := nodeConflist(t, node)
		if slices.Equal(types, chained) {
			return time.Since(t0)
		}
		if time.Since(t0) > within {
			t.Fatalf("%s: %s: plugins %v %s later, expected %v", node, what, types, within, chained)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKindRechainAfterPrimaryRewrite: kube-router owns its conflist and
// rewrites it (it writes the node's range and MTU into it whenever it
// starts). On the first worker, the file rewritten without meshlet-cni,
// in place and by rename, is chained again by the node agent; kube-router
// restarted leaves it chained; and a pod created after all that is
// redirected: a pod outside the mesh gets no HTTP answer from its app's
// port, while a meshed client gets hello world.
func TestKindRechainAfterPrimaryRewrite(t *testing.T) {
	c := kindCluster(t)
	node := kindcluster.Workers[0]
	conf, types := nodeConflist(t, node)
	if !slices.Equal(types, chained) {
		t.Fatalf("%s: plugins %v before the test, expected %v", node, types, chained)
	}
	// The file as kube-router writes it: its own plugins alone.
	plugins := conf["plugins"].([]any)
	conf["plugins"] = plugins[:len(plugins)-1]
	own, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, how := range []struct{ name, script string }{
		{"rewritten in place", `cat > ` + kubeRouterConflist},
		{"replaced by rename", `cat > /etc/cni/net.d/.kuberouter.tmp && mv /etc/cni/net.d/.kuberouter.tmp ` + kubeRouterConflist},
	} {
		cmd := exec.Command("docker", "exec", "-i", node, "sh", "-c", how.script)
		cmd.Stdin = strings.NewReader(string(own))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %s: %v: %s", node, how.name, err, out)
		}
		took := waitChained(t, node, how.name, 30*time.Second)
		t.Logf("%s: conflist %s without meshlet-cni: chained again after %s", node, how.name, took.Round(time.Millisecond))
	}

	// kube-router restarted on the node: whatever it writes, the chain
	// holds.
	router := strings.TrimSpace(mustKubectl(t, c, "-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-router",
		"--field-selector=spec.nodeName="+node, "-o", "jsonpath={.items[0].metadata.name}"))
	if router == "" {
		t.Fatalf("no kube-router pod on %s", node)
	}
	mustKubectl(t, c, "-n", "kube-system", "delete", "pod", router, "--wait=true")
	mustKubectl(t, c, "-n", "kube-system", "rollout", "status", "daemonset/kube-router", "--timeout=180s")
	took := waitChained(t, node, "after kube-router's restart", 30*time.Second)
	t.Logf("%s: kube-router pod %s restarted; chained %s after its rollout", node, router, took.Round(time.Millisecond))

	// A pod started now is redirected.
	ns := kindNamespace(t, c, "rechain")
	applyIn(t, c, ns, "static-server", pinned(t, c.Root, "static-server.yaml", node))
	applyIn(t, c, ns, "static-client", pinned(t, c.Root, "static-client.yaml", node))
	applyIn(t, c, ns, "outsider", `apiVersion: v1
kind: Pod
metadata: {name: outsider}
spec:
  nodeName: `+node+`
  containers:
    - name: outsider
      image: localhost/meshlet/static-client:dev
      command: [sleep, "3600"]
`)
	for _, d := range []string{"static-server", "static-client"} {
		mustKubectl(t, c, "-n", ns, "rollout", "status", "deployment/"+d, "--timeout=240s")
	}
	mustKubectl(t, c, "-n", ns, "wait", "pod/outsider", "--for=condition=Ready", "--timeout=120s")
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, code := kubectl(t, c, "-n", ns, "exec", "deploy/static-client", "-c", "static-client", "--",
			"curl", "-s", "--max-time", "5", "http://static-server/")
		if code == 0 && strings.Contains(out, "hello world") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("meshed client: curl http://static-server/: exit %d %q", code, out)
		}
		time.Sleep(time.Second)
	}
	serverIP := podsOf(t, c, ns, "static-server")
	if len(serverIP) != 1 {
		t.Fatalf("static-server pods %v, expected one", serverIP)
	}
	for _, p := range serverIP {
		out, code := kubectl(t, c, "-n", ns, "exec", "outsider", "--", "curl", "-s", "--max-time", "5", "http://"+p.ip+":8080/")
		if code != 52 && code != 56 {
			t.Errorf("outsider → the server pod's :8080: exit %d %q, expected no HTTP answer (curl exit 52 or 56)", code, out)
		}
	}
}
