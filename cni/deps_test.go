package cni

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsNothingOfTheNodeAgent: the plugin, its protocol with the
// node agent and that protocol's test fake link no package of the node
// agent's tree (daemon/). The node agent's server imports the protocol
// from cni/nodeagent, never the other way round, so the plugin does not
// grow with the node agent.
func TestImportsNothingOfTheNodeAgent(t *testing.T) {
	// go test puts its own GOROOT/bin first on the test's PATH: this
	// finds the go that runs the test; the skip is for a test binary run
	// by hand.
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the plugin's packages")
	}
	out, err := exec.Command(gobin, "list", "-deps", ".", "./nodeagent", "./nodeagent/nodeagenttest").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const tree = "github.com/meshlet/meshlet/daemon"
	for _, p := range strings.Fields(string(out)) {
		if p == tree || strings.HasPrefix(p, tree+"/") {
			t.Errorf("the plugin links %s, of the node agent's tree", p)
		}
	}
}
