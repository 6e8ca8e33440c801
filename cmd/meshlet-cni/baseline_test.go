package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/netnstest"
)

// defaultBaseline is the plugin before issue 6 (docs/benchmarks.md).
const defaultBaseline = "50cfc7b"

// BenchmarkADDAgainstBaseline execs ADD of this tree's meshlet-cni and of
// meshlet-cni built at the git revision $MESHLET_BASELINE (default
// defaultBaseline), alternating, each into a fresh netns, for a plain pod
// and an injected one (annotations from the runtime: no cluster needed).
// It reports each median and this/baseline, so a change is judged against
// a baseline measured in the same run on the same machine.
func BenchmarkADDAgainstBaseline(b *testing.B) {
	rev := os.Getenv("MESHLET_BASELINE")
	if rev == "" {
		rev = defaultBaseline
	}
	netnstest.RequireRoot(b)
	dir := b.TempDir()
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		b.Fatal(err)
	}
	root := strings.TrimSpace(string(top))
	tree := filepath.Join(dir, "baseline-src")
	if o, err := exec.Command("git", "-C", root, "worktree", "add", "--detach", tree, rev).CombinedOutput(); err != nil {
		b.Fatalf("git worktree add %s: %v: %s", rev, err, o)
	}
	b.Cleanup(func() { _ = exec.Command("git", "-C", root, "worktree", "remove", "--force", tree).Run() })
	bins := []string{buildPlugin(b, root, filepath.Join(dir, "current")), buildPlugin(b, tree, filepath.Join(dir, "baseline"))}

	redirect := `{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001,"ExcludeInboundPorts":["21000"],"ExcludeOutboundPorts":["443"],"ExcludeOutboundCIDRs":["10.96.0.1/32"],"ExcludeUIDs":["1000"]}`
	for _, v := range []struct {
		name string
		ann  map[string]string
	}{
		{"plain", map[string]string{}},
		{"injected", map[string]string{
			"consul.hashicorp.com/connect-inject-status":    "injected",
			"consul.hashicorp.com/transparent-proxy-status": "enabled",
			"consul.hashicorp.com/redirect-traffic-config":  redirect,
		}},
	} {
		conf, _ := json.Marshal(map[string]any{
			"cniVersion": "1.0.0", "name": "bench", "type": "meshlet-cni", "log_level": "error",
			"kubeconfig":    filepath.Join(dir, "unused-kubeconfig"),
			"log_file":      filepath.Join(dir, "cni.log"),
			"runtimeConfig": map[string]any{"io.kubernetes.cri.pod-annotations": v.ann},
			"prevResult": map[string]any{"cniVersion": "1.0.0", "interfaces": []map[string]string{{"name": "eth0"}},
				"ips": []map[string]any{{"address": "10.248.0.2/24", "interface": 0}}},
		})
		b.Run(v.name, func(b *testing.B) {
			d := make([][]time.Duration, len(bins))
			for i := 0; i < b.N; i++ {
				for k := range bins {
					// Alternate who goes first: the exec right after
					// creating a netns is not the same as the next one.
					j := (k + i) % len(bins)
					bin := bins[j]
					b.StopTimer()
					n := netnstest.NewNS(b)
					c := exec.Command(bin)
					c.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=bench", "CNI_NETNS=" + n.Path(), "CNI_IFNAME=eth0",
						"CNI_PATH=" + dir, "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
						"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=" + v.name}
					c.Stdin = strings.NewReader(string(conf))
					b.StartTimer()
					t0 := time.Now()
					out, err := c.CombinedOutput()
					d[j] = append(d[j], time.Since(t0))
					if err != nil {
						b.Fatalf("%s: %v: %s", bin, err, out)
					}
				}
			}
			p50 := func(s []time.Duration) float64 {
				slices.Sort(s)
				return float64(s[len(s)/2].Microseconds()) / 1000
			}
			cur, base := p50(d[0]), p50(d[1])
			b.ReportMetric(cur, "current-p50-ms")
			b.ReportMetric(base, "baseline-p50-ms")
			b.ReportMetric(cur/base, "current/baseline")
		})
	}
}
