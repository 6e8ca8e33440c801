package webhook

import (
	"strings"
	"testing"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
)

// fuzzKeys are the annotations the fuzzer writes, one at a time.
var fuzzKeys = []string{
	contract.Inject, contract.Service, contract.ServicePort, contract.Upstreams,
	contract.TransparentProxy, contract.OverwriteProbes, contract.ExcludeInboundPorts,
	contract.ExcludeOutboundPorts, contract.ExcludeOutboundCIDRs, contract.ExcludeUIDs,
	contract.EnvoyExtraArgs, contract.ServiceTags, contract.ServiceMetaPrefix + "k",
	contract.SidecarCPULimit, contract.SidecarCPURequest, contract.SidecarMemoryLimit,
	contract.SidecarMemoryRequest, contract.EnableMetrics, contract.EnableMetricsMerging,
	contract.MergedMetricsPort, contract.PrometheusScrapePort, contract.PrometheusScrapePath,
	contract.ServiceMetricsPort, contract.ServiceMetricsPath, contract.ConsulDNS,
}

// FuzzAnnotation: whatever one annotation says, the webhook does not
// panic; a denial names the annotation; an admitted pod's redirect config
// is one meshlet-cni applies and its registration one the node agent reads, so
// no value can get a pod admitted that then runs unprotected or
// unregistered.
func FuzzAnnotation(f *testing.F) {
	seeds := []string{"true", "false", "8080", "http", "db:5432", "db.ns:5432:dc1, prepared_query:q:7000",
		"a:1,a:1", "10.0.0.0/8,::1", "1000-2000", "--log-level debug", "100m", "128Mi", "/metrics",
		"", " ", ",", ":", "::", "-1", "65536", "1e3", "0x10", "\x00", "ünïcode", "a:99999", "prepared_query:"}
	for i := range fuzzKeys {
		for _, s := range seeds {
			f.Add(i, s)
		}
	}
	f.Fuzz(func(t *testing.T, i int, v string) {
		if i < 0 {
			i = -i
		}
		key := fuzzKeys[i%len(fuzzKeys)]
		ann := on(key, v)
		if key == contract.Inject {
			ann = map[string]string{key: v}
		}
		pod := app(ann)
		res := Mutate(pod, "shop", consulCfg(func(c *Config) { c.Metrics.DefaultEnabled = false }))
		switch {
		case res.Denied != nil:
			if !strings.Contains(res.Denied.Error(), key) {
				t.Fatalf("%s=%q: denial %q does not name the annotation", key, v, res.Denied)
			}
			if res.Patch != nil {
				t.Fatalf("%s=%q: denied with a patch", key, v)
			}
		case res.Patch == nil:
			if key != contract.Inject {
				t.Fatalf("%s=%q: an opted-in pod was neither injected nor denied (%s)", key, v, res.Skipped)
			}
		default:
			samePodAfterPatch(t, pod, "shop", consulCfg(func(c *Config) { c.Metrics.DefaultEnabled = false }))
			injected := applyPatch(t, pod, res)
			if _, err := iptables.RedirectPlan(injected.Annotations); err != nil {
				t.Fatalf("%s=%q: admitted with a redirect config meshlet-cni refuses: %v", key, v, err)
			}
			if _, err := contract.DecodeRegistration(injected.Annotations[contract.RegistrationKey]); err != nil {
				t.Fatalf("%s=%q: admitted with a registration the agent refuses: %v", key, v, err)
			}
		}
	})
}
