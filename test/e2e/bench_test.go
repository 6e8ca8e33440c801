package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
	"github.com/meshlet/meshlet/test/netnstest"
	"github.com/meshlet/meshlet/test/perrule"
)

// Plugin benchmarks: meshlet-cni is exec'd exactly as a runtime execs it
// (a fresh process, CNI_* environment, the conflist entry with prevResult on
// stdin), so start-up, the pod lookup and the rule apply are all measured.
// make bench runs them; docs/benchmarks.md has the numbers.

// pluginInvocation is one ADD of meshlet-cni for a pod into a netns.
type pluginInvocation struct {
	netns, namespace, name string
	annotations            map[string]string // nil: the runtime passes none, so the plugin asks the API
	dualStack              bool              // an IPv6 address too
}

func (p pluginInvocation) run(cmd string) error {
	conf := lc.MeshletCNIConf()
	conf["cniVersion"], conf["name"] = "1.0.0", "meshlet-pods"
	ips := []map[string]any{{"address": "10.248.0.2/24", "interface": 0}}
	if p.dualStack {
		ips = append(ips, map[string]any{"address": "fd00:248::2/64", "interface": 0})
	}
	conf["prevResult"] = map[string]any{
		"cniVersion": "1.0.0",
		"interfaces": []map[string]string{{"name": "eth0", "sandbox": p.netns}},
		"ips":        ips,
	}
	conf["log_level"] = "error"
	if p.annotations != nil {
		conf["runtimeConfig"] = map[string]any{contract.CapabilityPodAnnotations: p.annotations}
	}
	stdin, _ := json.Marshal(conf)
	c := exec.Command(filepath.Join(lc.CNIBinDir(), "meshlet-cni"))
	c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=bench", "CNI_NETNS=" + p.netns, "CNI_IFNAME=eth0",
		"CNI_PATH=" + lc.CNIBinDir(), "PATH=" + os.Getenv("PATH"),
		fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s", p.namespace, p.name)}
	c.Stdin = strings.NewReader(string(stdin))
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("meshlet-cni %s: %w: %s", cmd, err, out)
	}
	return nil
}

// BenchmarkPluginADD: p50/p90 of one ADD, for an injected pod (annotations
// from the runtime, or read from the API server) and a plain pod.
func BenchmarkPluginADD(b *testing.B) {
	requireLocalNode(b, "runs meshlet-cni on the node's host")
	cs := clientset(b)
	nsName := testNamespace(b, cs, "bench")
	createPodObject(b, cs, nsName, "injected", injectedAnnotations(redirectConfig))
	createPodObject(b, cs, nsName, "plain", nil)
	a := applier(b)
	variants := []struct {
		name string
		inv  pluginInvocation
		plan *iptables.Plan
	}{
		{"injected/runtime-annotations", pluginInvocation{namespace: nsName, name: "injected", annotations: injectedAnnotations(redirectConfig)}, mustPlan(b, redirectConfig)},
		{"injected/api-lookup", pluginInvocation{namespace: nsName, name: "injected"}, mustPlan(b, redirectConfig)},
		{"injected+dns/runtime-annotations", pluginInvocation{namespace: nsName, name: "injected", annotations: injectedAnnotations(redirectConfigDNS)}, mustPlan(b, redirectConfigDNS)},
		{"plain/runtime-annotations", pluginInvocation{namespace: nsName, name: "plain", annotations: map[string]string{}}, nil},
		{"plain/api-lookup", pluginInvocation{namespace: nsName, name: "plain"}, nil},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			netns := netnstest.NewNS(b)
			v.inv.netns = netns.Path()
			var d []time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if _, err := a.Remove(netns.Path(), []iptables.Family{iptables.IPv4}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				t0 := time.Now()
				if err := v.inv.run("ADD"); err != nil {
					b.Fatal(err)
				}
				d = append(d, time.Since(t0))
			}
			b.StopTimer()
			if err := a.Verify(netns.Path(), v.plan, []iptables.Family{iptables.IPv4}); err != nil {
				b.Fatalf("rules after the last ADD: %v", err)
			}
			b.ReportMetric(percentile(d, 0.5), "p50-ms")
			b.ReportMetric(percentile(d, 0.9), "p90-ms")
		})
	}
}

// redirectConfig with Consul DNS: two DNAT rules and their jumps more.
const redirectConfigDNS = `{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001,"ConsulDNSIP":"10.96.0.10","ConsulDNSPort":8600}`

// BenchmarkADDandDEL: ADD and DEL of an injected pod, exec'd like a
// runtime, alternating in one netns; reports both medians and DEL/ADD.
// Both families, as for a dual-stack pod.
func BenchmarkADDandDEL(b *testing.B) {
	requireLocalNode(b, "runs meshlet-cni on the node's host")
	a := applier(b)
	plan := mustPlan(b, redirectConfig)
	netns := netnstest.NewNS(b)
	inv := pluginInvocation{netns: netns.Path(), namespace: "bench", name: "injected", dualStack: true,
		annotations: injectedAnnotations(redirectConfig)}
	fams := []iptables.Family{iptables.IPv4, iptables.IPv6}
	var add, del []time.Duration
	for i := 0; i < b.N; i++ {
		for _, step := range []struct {
			cmd  string
			d    *[]time.Duration
			want *iptables.Plan
		}{{"ADD", &add, plan}, {"DEL", &del, nil}} {
			t0 := time.Now()
			if err := inv.run(step.cmd); err != nil {
				b.Fatal(err)
			}
			*step.d = append(*step.d, time.Since(t0))
			if err := a.Verify(netns.Path(), step.want, fams); err != nil {
				b.Fatalf("rules after %s: %v", step.cmd, err)
			}
		}
	}
	b.ReportMetric(percentile(add, 0.5), "add-p50-ms")
	b.ReportMetric(percentile(del, 0.5), "del-p50-ms")
	b.ReportMetric(percentile(del, 0.5)/percentile(add, 0.5), "del/add-x")
}

// BenchmarkADDvsPerRuleExec measures meshlet-cni's ADD and the
// one-process-per-rule method on the same ruleset, alternating, in the same
// run, and reports the ratio of their medians: with the annotations from
// the runtime (containerd and CRI-O pass them) and read from the API server.
func BenchmarkADDvsPerRuleExec(b *testing.B) {
	requireLocalNode(b, "runs meshlet-cni on the node's host")
	cs := clientset(b)
	nsName := testNamespace(b, cs, "bench")
	createPodObject(b, cs, nsName, "injected", injectedAnnotations(redirectConfig))
	a := applier(b)
	plan := mustPlan(b, redirectConfig)
	rs := plan.Rules(iptables.IPv4)
	for _, v := range []struct {
		name string
		ann  map[string]string
	}{{"runtime-annotations", injectedAnnotations(redirectConfig)}, {"api-lookup", nil}} {
		b.Run(v.name, func(b *testing.B) {
			netns := netnstest.NewNS(b)
			inv := pluginInvocation{netns: netns.Path(), namespace: nsName, name: "injected", annotations: v.ann}
			var ours, baseline []time.Duration
			for i := 0; i < b.N; i++ {
				for side, apply := range []func() error{
					func() error { return inv.run("ADD") },
					func() error { return perrule.Apply(netns.Path(), rs) },
				} {
					if _, err := a.Remove(netns.Path(), []iptables.Family{iptables.IPv4}); err != nil {
						b.Fatal(err)
					}
					t0 := time.Now()
					if err := apply(); err != nil {
						b.Fatal(err)
					}
					if side == 0 {
						ours = append(ours, time.Since(t0))
					} else {
						baseline = append(baseline, time.Since(t0))
					}
					if err := a.Verify(netns.Path(), plan, []iptables.Family{iptables.IPv4}); err != nil {
						b.Fatalf("rules differ: %v", err)
					}
				}
			}
			b.ReportMetric(percentile(ours, 0.5), "meshlet-p50-ms")
			b.ReportMetric(percentile(baseline, 0.5), "per-rule-p50-ms")
			b.ReportMetric(percentile(baseline, 0.5)/percentile(ours, 0.5), "speedup-x")
		})
	}
}

// BenchmarkConcurrentADD50: 50 ADDs at once into 50 network namespaces, as
// a node does when a Deployment scales up; all must end with exact rules.
func BenchmarkConcurrentADD50(b *testing.B) {
	requireLocalNode(b, "runs meshlet-cni on the node's host")
	const pods = 50
	a := applier(b)
	plan := mustPlan(b, redirectConfig)
	var walls []time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		nss := make([]ns.NetNS, pods)
		for j := range nss {
			nss[j] = netnstest.NewNS(b)
		}
		b.StartTimer()
		t0 := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, pods)
		for j := range nss {
			wg.Add(1)
			go func(n ns.NetNS) {
				defer wg.Done()
				inv := pluginInvocation{netns: n.Path(), namespace: "bench", name: fmt.Sprintf("pod-%d", j),
					annotations: injectedAnnotations(redirectConfig)}
				errs <- inv.run("ADD")
			}(nss[j])
		}
		wg.Wait()
		walls = append(walls, time.Since(t0))
		b.StopTimer()
		close(errs)
		for err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		for _, n := range nss {
			if err := a.Verify(n.Path(), plan, []iptables.Family{iptables.IPv4}); err != nil {
				b.Fatalf("%s: %v", n.Path(), err)
			}
		}
		b.StartTimer()
	}
	b.ReportMetric(percentile(walls, 0.5), "wall-p50-ms")
	b.ReportMetric(percentile(walls, 1), "wall-max-ms")
}
