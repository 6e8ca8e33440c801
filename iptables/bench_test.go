package iptables

import (
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/netnstest"
)

// BenchmarkRender: validating a redirect config and rendering both
// families, the in-process work of every ADD before any syscall.
func BenchmarkRender(b *testing.B) {
	cfg := goldenConfigs["exclusions"]
	for i := 0; i < b.N; i++ {
		p, err := cfg.Validate()
		if err != nil {
			b.Fatal(err)
		}
		_ = p.Rules(IPv4)
		_ = p.Rules(IPv6)
	}
}

// BenchmarkApply: one family into a fresh netns, over netlink and through
// iptables-restore, with the rules' comments and without them (the cost of
// the comments decides whether meshlet writes them); netns creation is not
// timed.
func BenchmarkApply(b *testing.B) {
	p, err := goldenConfigs["exclusions"].Validate()
	if err != nil {
		b.Fatal(err)
	}
	for _, be := range backends {
		for _, comments := range []bool{true, false} {
			rs := p.Rules(IPv4)
			name := be.name + "/comments"
			if !comments {
				name = be.name + "/no-comments"
				for i := range rs.Rules {
					rs.Rules[i].Comment = ""
				}
			}
			b.Run(name, func(b *testing.B) {
				netnstest.RequireRoot(b)
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					pod := netnstest.NewNS(b).Path()
					b.StartTimer()
					if err := be.a.applyRulesets(pod, []Ruleset{rs}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkRemove: removing both families' rules from a netns (applying
// them is not timed): DEL's work, over netlink and through the tools. It
// also reports the CPU time spent (this process and the tools it ran): a
// commit that deletes rules waits in the kernel for an RCU grace period,
// so wall time and CPU time differ by an order of magnitude.
func BenchmarkRemove(b *testing.B) {
	p, err := goldenConfigs["exclusions"].Validate()
	if err != nil {
		b.Fatal(err)
	}
	fams := []Family{IPv4, IPv6}
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			netnstest.RequireRoot(b)
			pod := netnstest.NewNS(b).Path()
			var cpu time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if err := be.a.Apply(pod, p, fams); err != nil {
					b.Fatal(err)
				}
				c0 := cpuTime()
				b.StartTimer()
				if _, err := be.a.Remove(pod, fams); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				cpu += cpuTime() - c0
			}
			b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/op")
			if err := be.a.Verify(pod, nil, fams); err != nil {
				b.Fatalf("rules left: %v", err)
			}
		})
	}
}

// cpuTime is the user and system time of this process and of its waited-for
// children.
func cpuTime() time.Duration {
	var total time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var r syscall.Rusage
		if err := syscall.Getrusage(who, &r); err == nil {
			total += time.Duration(r.Utime.Nano() + r.Stime.Nano())
		}
	}
	return total
}
