package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/daemon/podcache"
	"github.com/meshlet/meshlet/iptables"
	"github.com/meshlet/meshlet/test/netnstest"
	"github.com/meshlet/meshlet/test/perrule"
)

// BenchmarkADDFromAgent: an injected pod's ADD when the runtime passes no
// annotations and the plugin asks the node agent's pod cache
// (daemon/podcache, served from this process on a temp socket, from a
// client-go lister as the agent does), against the same ADD with the
// runtime's annotations and against one process per rule (perrule, the
// consul-k8s way), alternating in one netns in the same run. Each ADD
// execs this tree's meshlet-cni as a runtime does. No cluster: the
// kubeconfig does not exist, so an ADD that fell through to the API
// server would fail. Reports the medians (and p90 of the plugin's two
// paths) and per-rule/agent.
func BenchmarkADDFromAgent(b *testing.B) {
	netnstest.RequireRoot(b)
	dir := b.TempDir()
	bin := buildPlugin(b, "../..", filepath.Join(dir, "meshlet-cni"))
	redirect := `{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001,"ExcludeInboundPorts":["21000"],"ExcludeOutboundPorts":["443"],"ExcludeOutboundCIDRs":["10.96.0.1/32"],"ExcludeUIDs":["1000"]}`
	ann := map[string]string{
		contract.InjectStatus:   "injected",
		contract.TProxyStatus:   contract.TProxyEnabled,
		contract.RedirectConfig: redirect,
	}
	plan, err := iptables.RedirectPlan(ann)
	if err != nil {
		b.Fatal(err)
	}
	mode, err := iptables.DetectMode()
	if err != nil {
		b.Fatal(err)
	}
	a := iptables.Applier{Mode: mode}
	fams := []iptables.Family{iptables.IPv4}

	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := pods.Add(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "injected", UID: "3f1c-bench", Annotations: ann}}); err != nil {
		b.Fatal(err)
	}
	srv := podcache.New(filepath.Join(dir, "cni.sock"), podcache.ListerLookup{Lister: corelisters.NewPodLister(pods)})
	reg := prometheus.NewRegistry()
	srv.Metrics = podcache.NewMetrics(reg)
	if err := srv.Listen(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			b.Error(err)
		}
	})

	netns := netnstest.NewNS(b)
	add := func(extra map[string]any) func() error {
		conf := map[string]any{
			"cniVersion": "1.0.0", "name": "bench", "type": "meshlet-cni", "log_level": "error",
			"kubeconfig": filepath.Join(dir, "no-kubeconfig"),
			"log_file":   filepath.Join(dir, "cni.log"),
			"prevResult": map[string]any{"cniVersion": "1.0.0", "interfaces": []map[string]string{{"name": "eth0"}},
				"ips": []map[string]any{{"address": "10.248.0.2/24", "interface": 0}}},
		}
		for k, v := range extra {
			conf[k] = v
		}
		stdin, _ := json.Marshal(conf)
		return func() error {
			c := exec.Command(bin)
			c.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=bench", "CNI_NETNS=" + netns.Path(), "CNI_IFNAME=eth0",
				"CNI_PATH=" + dir, "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
				"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=injected;K8S_POD_UID=3f1c-bench"}
			c.Stdin = strings.NewReader(string(stdin))
			if out, err := c.CombinedOutput(); err != nil {
				return fmt.Errorf("meshlet-cni: %w: %s", err, out)
			}
			return nil
		}
	}
	sides := []struct {
		name  string
		apply func() error
		d     []time.Duration
	}{
		{name: "agent", apply: add(map[string]any{"agent_socket": srv.Socket()})},
		{name: "runtime", apply: add(map[string]any{"runtimeConfig": map[string]any{"io.kubernetes.cri.pod-annotations": ann}})},
		{name: "per-rule", apply: func() error { return perrule.Apply(netns.Path(), plan.Rules(iptables.IPv4)) }},
	}
	for i := 0; i < b.N; i++ {
		for k := range sides {
			// Rotate who goes first, as BenchmarkADDAgainstBaseline does.
			s := &sides[(k+i)%len(sides)]
			if _, err := a.Remove(netns.Path(), fams); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			if err := s.apply(); err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
			s.d = append(s.d, time.Since(t0))
			if err := a.Verify(netns.Path(), plan, fams); err != nil {
				b.Fatalf("%s: rules differ: %v", s.name, err)
			}
		}
	}
	b.StopTimer()
	if hits := agentHits(b, reg); hits != b.N {
		b.Fatalf("the agent answered %d of %d ADDs", hits, b.N)
	}
	agent, runtime, perRule := percentile(sides[0].d, 0.5), percentile(sides[1].d, 0.5), percentile(sides[2].d, 0.5)
	b.ReportMetric(agent, "agent-p50-ms")
	b.ReportMetric(percentile(sides[0].d, 0.9), "agent-p90-ms")
	b.ReportMetric(runtime, "runtime-p50-ms")
	b.ReportMetric(percentile(sides[1].d, 0.9), "runtime-p90-ms")
	b.ReportMetric(perRule, "per-rule-p50-ms")
	b.ReportMetric(perRule/agent, "speedup-x")
}

// agentHits is meshlet_podcache_requests_total{result="hit"}.
func agentHits(b *testing.B, reg *prometheus.Registry) int {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if mf.GetName() == "meshlet_podcache_requests_total" && l.GetName() == "result" && l.GetValue() == "hit" {
					return int(m.GetCounter().GetValue())
				}
			}
		}
	}
	b.Fatal("no meshlet_podcache_requests_total{result=\"hit\"}")
	return 0
}

// percentile q of d in milliseconds, as test/e2e's benchmarks take it.
func percentile(d []time.Duration, q float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[int(float64(len(s)-1)*q)].Microseconds()) / 1000
}

// buildPlugin builds meshlet-cni from the module rooted at srcDir, as
// make build does.
func buildPlugin(b *testing.B, srcDir, out string) string {
	b.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/meshlet-cni")
	cmd.Dir, cmd.Env = srcDir, append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build %s: %v: %s", out, err, o)
	}
	return out
}
