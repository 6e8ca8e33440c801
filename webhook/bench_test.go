package webhook

import (
	"testing"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/webhook/envoybootstrap"
)

// BenchmarkMutate: one pod through the webhook's mutation, in process, for
// each data plane (go test -run '^$' -bench Mutate -benchmem ./webhook/).
func BenchmarkMutate(b *testing.B) {
	pod := app(on(contract.Upstreams, "db:5432", contract.ServiceTags, "v1"))
	for _, c := range []struct {
		name string
		cfg  Config
	}{{"envoy", DefaultConfig()}, {"consul", consulCfg()}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if res := Mutate(pod, "shop", c.cfg); res.Patch == nil {
					b.Fatalf("not injected: %v %s", res.Denied, res.Skipped)
				}
			}
		})
	}
}

// TestBootstrapCache: a cached bootstrap is the one YAML renders for the
// same inputs, and other inputs get their own.
func TestBootstrapCache(t *testing.T) {
	base := envoybootstrap.Config{ProxyID: proxyIDRef, ServiceName: "web", AgentHost: hostIPRef, AgentGRPCPort: 8502, AdminBind: "127.0.0.1", AdminPort: 19000}
	other := base
	other.ServiceName, other.Namespace = "api", "apps"
	for _, b := range []envoybootstrap.Config{base, other, base, other} {
		want, err := b.YAML()
		if err != nil {
			t.Fatal(err)
		}
		got, err := bootstrapYAML(b)
		if err != nil || got != want {
			t.Fatalf("%+v: cached bootstrap differs from the rendered one (err %v)", b, err)
		}
	}
	bad := base
	bad.AgentGRPCPort = 0
	if _, err := bootstrapYAML(bad); err == nil {
		t.Error("an invalid bootstrap came back without an error")
	}
}
