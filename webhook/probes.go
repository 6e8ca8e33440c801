package webhook

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshlet/meshlet/contract"
)

// Expose listener ports for rewritten probes, by probe kind, plus the
// container's index (consul-k8s' numbering, so its dashboards and
// NetworkPolicies carry over).
const (
	livenessExposeBase  = 20300
	readinessExposeBase = 20400
	startupExposeBase   = 20500
)

// overwriteProbes points every HTTP probe of the app containers at a proxy
// expose listener and returns the paths the proxy must serve: with inbound
// redirection, kubelet's GET to the app port would reach the proxy's mTLS
// listener and the pod would never become ready. exec probes run inside the
// container and tcpSocket probes still connect, so they stay; so do HTTPS
// probes and probes to another host, which an expose path cannot carry.
func overwriteProbes(pod *corev1.Pod) []contract.ExposePath {
	var out []contract.ExposePath
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		for _, pr := range []struct {
			probe *corev1.Probe
			base  int
		}{{c.LivenessProbe, livenessExposeBase}, {c.ReadinessProbe, readinessExposeBase}, {c.StartupProbe, startupExposeBase}} {
			if !exposable(c, pr.probe) {
				continue
			}
			g := pr.probe.HTTPGet
			local := g.Port.IntValue()
			if g.Port.Type == intstr.String {
				local = containerPort(c, g.Port.StrVal)
			}
			listener := pr.base + i
			out = append(out, contract.ExposePath{ListenerPort: listener, Path: g.Path, LocalPathPort: local})
			g.Port = intstr.FromInt(listener)
		}
	}
	return out
}

func containerPort(c *corev1.Container, name string) int {
	for _, p := range c.Ports {
		if p.Name == name {
			return int(p.ContainerPort)
		}
	}
	return 0
}
