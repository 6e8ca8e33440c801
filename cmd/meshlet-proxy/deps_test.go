package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestLinksOnlyTheProxy: the per-pod binary links neither Kubernetes'
// libraries nor meshlet's other parts, the rules library and its netfilter
// and netns code included (the proxy takes its ports from the contract);
// an import that brings one in fails here naming it.
func TestLinksOnlyTheProxy(t *testing.T) {
	// go test puts its own GOROOT/bin first on the test's PATH; the skip
	// is for a test binary run by hand.
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the binary's packages")
	}
	out, err := exec.Command(gobin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := strings.Fields(string(out))
	if len(pkgs) < 50 || !slices.Contains(pkgs, "github.com/meshlet/meshlet/dataplane") {
		t.Fatalf("go list gave %d packages without dataplane: %q", len(pkgs), pkgs)
	}
	for _, p := range pkgs {
		for _, bad := range []string{"k8s.io/", "sigs.k8s.io/", "github.com/envoyproxy/",
			"github.com/meshlet/meshlet/webhook", "github.com/meshlet/meshlet/daemon",
			"github.com/meshlet/meshlet/kubeclient", "github.com/meshlet/meshlet/cni",
			"github.com/meshlet/meshlet/iptables", "github.com/google/nftables", "github.com/mdlayher/netlink",
			"github.com/containernetworking/"} {
			if strings.HasPrefix(p, bad) {
				t.Errorf("meshlet-proxy links %s", p)
			}
		}
	}
}
