package webhook

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/contract"
)

// TestEnvoyMetricsSidecar: data plane envoy with metrics on gets the
// metrics sidecar right after Envoy, wherever Envoy goes, serving the
// scrape port and path the pod's prometheus.io annotations name, with the
// app's page when merging is on, Envoy's alone when off; with metrics
// off, or another data plane, none.
func TestEnvoyMetricsSidecar(t *testing.T) {
	merging := func(extra ...string) map[string]string {
		return on(append([]string{contract.EnableMetrics, "true", contract.EnableMetricsMerging, "true"}, extra...)...)
	}
	for _, tc := range []struct {
		name string
		ann  map[string]string
		cfg  Config
		want []string // the sidecars' names, in order
		in   string   // initContainers or containers
	}{
		{"native", merging(contract.PrometheusScrapePath, "/scrape", contract.PrometheusScrapePort, "9900", contract.ServiceMetricsPort, "9102"),
			envoyCfg(), []string{envoySidecarName, envoyMetricsSidecarName}, "initContainers"},
		{"regular containers", merging(), envoyCfg(func(c *Config) { c.NativeSidecar = false }),
			[]string{envoySidecarName, envoyMetricsSidecarName}, "containers"},
		{"with a login", merging(contract.Service, "web"), envoySecureCfg(),
			[]string{envoyLoginSidecarName, envoySidecarName, envoyMetricsSidecarName}, "initContainers"},
		{"merging off", on(contract.EnableMetrics, "true"), envoyCfg(), []string{envoySidecarName, envoyMetricsSidecarName}, "initContainers"},
		{"metrics off", on(contract.EnableMetricsMerging, "true"), envoyCfg(), []string{envoySidecarName}, "initContainers"},
		{"data plane meshlet", merging(), meshletCfg(func(c *Config) { c.FastStart = false }), []string{meshletSidecarName}, "initContainers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := app(tc.ann)
			if tc.cfg.ACLAuthMethod != "" {
				withServiceAccountToken(pod)
			}
			res, injected := mutate(pod, "shop", tc.cfg)
			if res.Denied != nil || injected == nil {
				t.Fatalf("denied: %v", res.Denied)
			}
			list := injected.Spec.InitContainers
			if tc.in == "containers" {
				list = injected.Spec.Containers[len(pod.Spec.Containers):]
			}
			var names []string
			for _, c := range list {
				if isSidecarName(c.Name) {
					names = append(names, c.Name)
				}
			}
			if !slices.Equal(names, tc.want) {
				t.Fatalf("sidecars in %s: %v, want %v", tc.in, names, tc.want)
			}
			i := slices.IndexFunc(list, func(c corev1.Container) bool { return c.Name == envoyMetricsSidecarName })
			if i < 0 {
				return
			}
			c := list[i]
			args := strings.Join(c.Args, " ")
			wantArgs := "-metrics-addr :" + injected.Annotations["prometheus.io/port"] + " -metrics-path " + injected.Annotations["prometheus.io/path"]
			if !strings.HasPrefix(args, wantArgs) {
				t.Errorf("args %q: want them to start %q, where the prometheus.io annotations send the scraper", args, wantArgs)
			}
			if tc.ann[contract.ServiceMetricsPort] == "9102" && !strings.Contains(args, "-merge-app-metrics http://127.0.0.1:9102/metrics") {
				t.Errorf("args %q: want the app's page from service-metrics-port 9102", args)
			}
			if merges := tc.ann[contract.EnableMetricsMerging] == "true"; merges != strings.Contains(args, "-merge-app-metrics") {
				t.Errorf("args %q: the app's page is merged: %v, want %v (merging on)", args, !merges, merges)
			}
			if c.Image != tc.cfg.MeshletImage || !slices.Equal(c.Command, []string{meshletProxyCommand, "merge-metrics"}) {
				t.Errorf("image %s, command %v: want meshlet's image running %s merge-metrics", c.Image, c.Command, meshletProxyCommand)
			}
			if sc := c.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != contract.ProxyUID || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
				t.Errorf("security context %+v: want non-root as UID %d, like the other sidecars", sc, contract.ProxyUID)
			}
			if c.ReadinessProbe != nil || c.StartupProbe != nil || c.LivenessProbe != nil {
				t.Error("the metrics sidecar has a probe: metrics would hold the app or take the pod out of its Service")
			}
			if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
				t.Errorf("resources %v: want requests and limits", c.Resources)
			}
			if res.Warnings != nil {
				t.Errorf("warnings %q: want none where merging works", res.Warnings)
			}
		})
	}
}

// TestConfigMergingNeedsMeshletImage: metrics or merging on by default
// with data plane envoy and no meshlet image is refused at start; a pod
// asking for either under such a webhook is warned that nothing serves
// its scrape port. With data plane consul, metrics alone are warned too.
func TestConfigMergingNeedsMeshletImage(t *testing.T) {
	for _, set := range []func(*MetricsDefaults){
		func(m *MetricsDefaults) { m.DefaultEnableMerging = true },
		func(m *MetricsDefaults) { m.DefaultEnabled = true },
	} {
		c := DefaultConfig()
		set(&c.Metrics)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "metrics.defaultEnabled, defaultEnableMerging") || !strings.Contains(err.Error(), "meshlet's image") {
			t.Errorf("%+v, data plane envoy, no meshlet image: %v", c.Metrics, err)
		}
		c.MeshletImage = "meshlet.local/meshlet:dev"
		if err := c.Validate(); err != nil {
			t.Errorf("with meshlet's image: %v", err)
		}
	}
	for _, tc := range []struct {
		ann  map[string]string
		cfg  Config
		want []string
	}{
		{on(contract.EnableMetrics, "true", contract.EnableMetricsMerging, "true"), DefaultConfig(), []string{contract.EnableMetricsMerging, "-meshlet-image"}},
		{on(contract.EnableMetrics, "true"), DefaultConfig(), []string{contract.EnableMetrics, "-meshlet-image"}},
		{on(contract.EnableMetrics, "true"), consulCfg(), []string{contract.EnableMetrics, "data plane consul", "the scrape port serves nothing"}},
	} {
		res := Mutate(app(tc.ann), "shop", tc.cfg)
		if len(res.Warnings) != 1 {
			t.Errorf("%v on data plane %s: warnings %q, want one", tc.ann, tc.cfg.DataPlane, res.Warnings)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(res.Warnings[0], w) {
				t.Errorf("%v on data plane %s: warning %q does not name %q", tc.ann, tc.cfg.DataPlane, res.Warnings[0], w)
			}
		}
	}
}
