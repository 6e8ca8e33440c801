package iptables

import (
	"testing"

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
// iptables-restore (netns creation is not timed).
func BenchmarkApply(b *testing.B) {
	p, err := goldenConfigs["exclusions"].Validate()
	if err != nil {
		b.Fatal(err)
	}
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			netnstest.RequireRoot(b)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				pod := netnstest.NewNS(b).Path()
				b.StartTimer()
				if err := be.a.Apply(pod, p, []Family{IPv4}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
