package main

import (
	"os/exec"
	"strings"
	"testing"
)

// Packages the binaries must not link, because each costs every meshlet
// process (the per-pod proxy included) memory at start, whatever the
// subcommand: their init functions register types.
var heavy = []struct {
	prefix, why string
}{
	{"k8s.io/client-go/kubernetes", "client-go's clientset registers every API group; use kubeclient"},
	{"k8s.io/client-go/informers", "client-go's informer factory registers every API group; use kubeclient"},
	{"k8s.io/client-go/discovery", "client-go's discovery registers every API group; use kubeclient"},
	{"github.com/envoyproxy/go-control-plane", "go-control-plane registers every Envoy proto; " +
		"webhook/envoybootstrap writes the bootstrap without it, its tests use it"},
	{"github.com/cncf/xds", "comes with go-control-plane"},
}

// TestBinariesLinkNothingHeavy: a new import of one of the packages above,
// direct or not, fails here naming the package.
func TestBinariesLinkNothingHeavy(t *testing.T) {
	// go test puts its own GOROOT/bin first on the test's PATH: this
	// finds the go that runs the test; the skip is for a test binary run
	// by hand.
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the binaries' packages")
	}
	out, err := exec.Command(gobin, "list", "-deps", ".", "../meshlet-cni").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, h := range heavy {
		var linked []string
		for _, p := range strings.Fields(string(out)) {
			if p == h.prefix || strings.HasPrefix(p, h.prefix+"/") {
				linked = append(linked, p)
			}
		}
		if len(linked) > 0 {
			t.Errorf("the binaries link %d packages under %s (%s, ...): %s",
				len(linked), h.prefix, strings.Join(linked[:min(3, len(linked))], ", "), h.why)
		}
	}
}
