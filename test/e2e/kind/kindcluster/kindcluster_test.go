package kindcluster

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// TestConfig: one control plane and two workers (kind names them as
// Workers says), on subnets apart from each other and from the local
// cluster's.
func TestConfig(t *testing.T) {
	cfg := config()
	var roles []string
	for _, n := range cfg.Nodes {
		roles = append(roles, string(n.Role))
	}
	if got := strings.Join(roles, " "); got != "control-plane worker worker" {
		t.Errorf("nodes %q, want one control plane and two workers", got)
	}
	if len(Workers) != 2 || Workers[0] != Name+"-worker" || Workers[1] != Name+"-worker2" {
		t.Errorf("Workers = %v: not kind's names for the workers of cluster %q", Workers, Name)
	}
	subnets := map[string]string{
		"kind pods": cfg.Networking.PodSubnet, "kind services": cfg.Networking.ServiceSubnet,
		"local pods": cluster.PodCIDR, "local services": cluster.ServiceCIDR,
	}
	for a, sa := range subnets {
		for b, sb := range subnets {
			if a >= b {
				continue
			}
			pa, pb := netip.MustParsePrefix(sa), netip.MustParsePrefix(sb)
			if pa.Overlaps(pb) {
				t.Errorf("%s %s overlaps %s %s", a, sa, b, sb)
			}
		}
	}
	if cfg.Networking.DisableDefaultCNI {
		t.Error("the default CNI (the node image's kube-router) is disabled")
	}
}

// TestDockerShim: the shim turns kind's --privileged into every capability
// but CAP_SYS_RESOURCE and what a node needs on docker run, drops it on
// docker exec, and leaves every argument and other command alone.
func TestDockerShim(t *testing.T) {
	dir := t.TempDir()
	// A docker that prints its arguments, one a line.
	fake := filepath.Join(dir, "fake-docker")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nprintf '%s\\n' \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	shim := filepath.Join(dir, "docker")
	if err := os.WriteFile(shim, []byte(strings.ReplaceAll(shimScript, "@DOCKER@", fake)), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ args, want []string }{
		{[]string{"run", "--name", "n 1", "--privileged", "--tmpfs", "/run", "img"},
			[]string{"run", "--name", "n 1", "--cap-add=ALL", "--cap-drop=SYS_RESOURCE", "--security-opt=systempaths=unconfined",
				"--device-cgroup-rule=a *:* rwm", "--device=/dev/kmsg", "--tmpfs", "/run", "img"}},
		{[]string{"exec", "--privileged", "-i", "node", "ctr", "images", "import", "-"},
			[]string{"exec", "-i", "node", "ctr", "images", "import", "-"}},
		{[]string{"ps", "-a", "--filter", "label=x"}, []string{"ps", "-a", "--filter", "label=x"}},
	} {
		out, err := exec.Command(shim, tc.args...).Output()
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n"); strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("docker %q became\n%q\nwant\n%q", tc.args, got, tc.want)
		}
	}
}
