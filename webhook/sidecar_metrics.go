package webhook

import (
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/meshlet/meshlet/contract"
)

// envoyMetricsSidecarName is data plane envoy's metrics sidecar, right
// after Envoy (reserved like the sidecars' names).
const envoyMetricsSidecarName = contract.EnvoyMetricsSidecarName

// envoyMetricsNeeded: with data plane envoy, the scrape port is the
// metrics sidecar's whenever metrics are on: Envoy's page alone, or with
// the app's merged in (Envoy's inline bootstrap has no Prometheus
// listener of its own). Without meshlet's image the webhook has nothing
// to run it from (mutate warns).
func envoyMetricsNeeded(p parsed, cfg Config) bool {
	return cfg.DataPlane == DataPlaneEnvoy && p.metrics != nil && cfg.MeshletImage != ""
}

// envoyMetricsSidecar is `meshlet-proxy merge-metrics` from meshlet's
// image, beside Envoy: it serves the pod's scrape port and path, where the
// pod's prometheus.io annotations send Prometheus, each scrape fetching
// Envoy's page from its admin listener (127.0.0.1:19000, the default of
// -proxy-metrics) and the app's, merged as meshlet-proxy merges its own
// (consul-k8s ran its merging in a process beside Envoy too).
//
// No probe: a metrics endpoint must never take the pod out of its
// Service (a readiness probe of a sidecar counts in the pod's Ready) nor
// hold the app (a native sidecar's startup probe does), and its one way
// to fail, a port it cannot bind, ends the process, which kubelet
// restarts. base carries the sidecars' security context (the proxy's
// UID, whose traffic the pod's rules leave unredirected).
func envoyMetricsSidecar(base corev1.Container, reg contract.Registration, cfg Config) corev1.Container {
	m := reg.Metrics
	c := corev1.Container{
		Name: envoyMetricsSidecarName, Image: cfg.MeshletImage,
		SecurityContext: base.SecurityContext.DeepCopy(),
		Resources:       metricsResources(),
		Command:         []string{meshletProxyCommand, "merge-metrics"},
		Args:            []string{"-metrics-addr", ":" + strconv.Itoa(m.ScrapePort), "-metrics-path", m.ScrapePath},
	}
	if u := appMetricsURL(reg); u != "" {
		c.Args = append(c.Args, "-merge-app-metrics", u)
	}
	return c
}

// metricsResources: the merger parses and writes two pages per scrape,
// Envoy's (tens to hundreds of kB, more with many upstreams) and the
// app's; it asks for little, and has limits so that a namespace's quota
// that requires them admits the pod.
func metricsResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
	}
}
