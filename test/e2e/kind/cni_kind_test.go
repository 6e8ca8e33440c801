package kind

import (
	"encoding/json"
	"os/exec"
	"slices"
	"testing"

	"github.com/meshlet/meshlet/test/e2e/kind/kindcluster"
)

// kubeRouterConflist is the conflist kube-router writes on each node; the
// node agent chains meshlet-cni into that very file.
const kubeRouterConflist = "/etc/cni/net.d/10-kuberouter.conflist"

// TestKindCNIChained: on every node, kube-router's conflist keeps its own
// plugins first (bridge, portmap) and ends with meshlet-cni, and it is the
// only conflist there (the kubelet uses the first by name).
func TestKindCNIChained(t *testing.T) {
	kindCluster(t)
	for _, node := range append([]string{kindcluster.Name + "-control-plane"}, kindcluster.Workers...) {
		ls, err := exec.Command("docker", "exec", node, "ls", "/etc/cni/net.d").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: ls /etc/cni/net.d: %v: %s", node, err, ls)
		}
		if got := string(ls); got != "10-kuberouter.conflist\n" {
			t.Errorf("%s: /etc/cni/net.d holds %q, expected kube-router's conflist alone", node, got)
		}
		b, err := exec.Command("docker", "exec", node, "cat", kubeRouterConflist).Output()
		if err != nil {
			t.Fatalf("%s: cat %s: %v", node, kubeRouterConflist, err)
		}
		var conf struct {
			Name    string `json:"name"`
			Plugins []struct {
				Type string `json:"type"`
			} `json:"plugins"`
		}
		if err := json.Unmarshal(b, &conf); err != nil {
			t.Fatalf("%s: %s: %v: %s", node, kubeRouterConflist, err, b)
		}
		var types []string
		for _, p := range conf.Plugins {
			types = append(types, p.Type)
		}
		if want := []string{"bridge", "portmap", "meshlet-cni"}; conf.Name != "kube-router" || !slices.Equal(types, want) {
			t.Errorf("%s: conflist %q with plugins %v, expected kube-router's with %v", node, conf.Name, types, want)
		}
	}
}
