package podcache

import (
	"testing"
	"time"

	"github.com/meshlet/meshlet/cni/nodeagent"
)

// BenchmarkAsk: one lookup as meshlet-cni makes it (dial, request,
// answer, close), a hit with an injected pod's annotations.
func BenchmarkAsk(b *testing.B) {
	inf := newInformer(pod("ns", "web", "u", map[string]string{
		"consul.hashicorp.com/connect-inject-status":    "injected",
		"consul.hashicorp.com/transparent-proxy-status": "enabled",
		"consul.hashicorp.com/redirect-traffic-config":  `{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001,"ExcludeInboundPorts":["21000"],"ExcludeOutboundPorts":["443"],"ExcludeOutboundCIDRs":["10.96.0.1/32"],"ExcludeUIDs":["1000"]}`,
	}))
	s, _ := testServer(b, inf.lookup(), DefaultWait)
	req := nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "web", UID: "u"}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := nodeagent.Ask(s.Socket(), req, time.Second)
		if err != nil || !resp.Found {
			b.Fatal(resp, err)
		}
	}
}
