package webhook

import (
	"fmt"
	"net"
	"strconv"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/annotations"
)

// meshletMetricsPort is where `meshlet proxy` serves its counters when
// the pod has no metrics setup: on the pod's loopback, for kubectl exec
// and port-forward, never scraped.
const meshletMetricsPort = 20200

// meshletProxyCommand is the proxy's own binary in meshlet's image: the
// `meshlet proxy` code without the agent's and the webhook's, so that
// each pod's sidecar holds less memory (cmd/meshlet-proxy).
const meshletProxyCommand = "/meshlet-proxy"

// meshletSidecar runs `meshlet proxy` as meshlet-proxy from meshlet's
// image. The proxy finds its registration by
// $PROXY_ID and waits for the node agent to make it, so it needs no retry
// loop around it; kubelet expands $(HOST_IP) from the env.
func meshletSidecar(c corev1.Container, reg annotations.Registration, cfg Config) corev1.Container {
	c.Name, c.Image = meshletSidecarName, cfg.MeshletImage
	metrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(meshletMetricsPort))
	if m := reg.Metrics; m != nil {
		// Where the pod's prometheus.io annotations send the scraper.
		metrics = ":" + strconv.Itoa(m.ScrapePort)
	}
	c.Command = []string{meshletProxyCommand}
	c.Args = []string{"-http-addr", fmt.Sprintf("$(%s):%d", envHostIP, cfg.AgentHTTPPort), "-metrics-addr", metrics}
	// Kubelet starts the pod's next container once this hook returns, the
	// moment the proxy serves; a startup probe would pass only at its next
	// period, a second at worst, which is most of what a sidecar adds to
	// a pod's start (docs/benchmarks.md). The hook takes the probe's place
	// as the native sidecar's gate, and holds the app of a plain-container
	// sidecar, which is put first for it (holdsApp).
	c.StartupProbe = nil
	c.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{
		Exec: &corev1.ExecAction{Command: []string{meshletProxyCommand, "wait"}}}}
	return c
}

// holdsApp says the sidecar's postStart hook waits for the proxy: as a
// plain container it then goes first, and kubelet starts the app only
// after it (Istio's holdApplicationUntilProxyStarts, without a setting).
func holdsApp(c corev1.Container) bool {
	return c.Lifecycle != nil && c.Lifecycle.PostStart != nil
}
