package webhook

import (
	"errors"
	"fmt"
	"maps"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshlet/meshlet/contract"
)

// checkPortUses refuses a port the pod's annotations give to something
// (an upstream's local listener, the metrics ports) that the sidecar
// already listens on in the pod: the inbound port on all addresses, the
// outbound one with transparent proxy, Envoy's admin port, meshlet-proxy's
// metrics port, the expose listeners of rewritten probes. The proxy could
// not bind both; the message names both uses.
func checkPortUses(pod *corev1.Pod, p parsed, cfg Config) error {
	if len(p.upstreams) == 0 && p.metrics == nil {
		return nil // nothing the annotations place could collide
	}
	taken := map[int]string{contract.ProxyInboundPort: "the proxy's inbound port"}
	if p.tproxy {
		taken[contract.ProxyOutboundPort] = "the proxy's transparent outbound port"
		if p.overwriteProbes {
			maps.Copy(taken, exposeListeners(pod))
		}
	}
	switch {
	case cfg.DataPlane == DataPlaneEnvoy:
		taken[contract.EnvoyAdminPort] = "Envoy's admin port"
	case cfg.DataPlane == DataPlaneMeshlet && p.metrics == nil:
		taken[contract.ProxyMetricsPort] = "the proxy's metrics port"
	}
	var errs []error
	use := func(key string, port int, what string) {
		if other, ok := taken[port]; ok {
			errs = append(errs, invalid{key, strconv.Itoa(port), fmt.Sprintf("port %d is %s in the pod", port, other)})
			return
		}
		taken[port] = what
	}
	if m := p.metrics; m != nil {
		use(contract.PrometheusScrapePort, m.ScrapePort, "the proxy's metrics port (prometheus-scrape-port)")
		if m.Merging && m.MergedPort != 0 {
			use(contract.MergedMetricsPort, m.MergedPort, "the merged metrics port (merged-metrics-port)")
		}
	}
	for i, u := range p.upstreams {
		if other, ok := taken[u.LocalPort]; ok {
			errs = append(errs, invalid{contract.Upstreams, p.upstreamsAsWritten[i], fmt.Sprintf("local port %d is %s in the pod", u.LocalPort, other)})
		}
	}
	return errors.Join(errs...)
}

// exposeListeners are the ports overwriteProbes gives the pod's HTTP
// probes, each with what it is, without changing the pod.
func exposeListeners(pod *corev1.Pod) map[int]string {
	out := map[int]string{}
	for i, c := range pod.Spec.Containers {
		for _, pr := range []struct {
			kind  string
			probe *corev1.Probe
			base  int
		}{{"liveness", c.LivenessProbe, livenessExposeBase}, {"readiness", c.ReadinessProbe, readinessExposeBase},
			{"startup", c.StartupProbe, startupExposeBase}} {
			if !exposable(&c, pr.probe) {
				continue
			}
			out[pr.base+i] = fmt.Sprintf("the expose listener of container %q's %s probe", c.Name, pr.kind)
		}
	}
	return out
}

// exposable: overwriteProbes rewrites this probe of c. Not HTTPS or
// another host: the expose path speaks plain HTTP to the pod itself; not
// a named port that does not exist: kubelet reports that.
func exposable(c *corev1.Container, probe *corev1.Probe) bool {
	if probe == nil || probe.HTTPGet == nil {
		return false
	}
	g := probe.HTTPGet
	if g.Scheme == corev1.URISchemeHTTPS || g.Host != "" {
		return false
	}
	if g.Port.Type == intstr.String {
		return containerPort(c, g.Port.StrVal) != 0
	}
	return g.Port.IntValue() != 0
}
