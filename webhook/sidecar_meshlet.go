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
	if !cfg.NativeSidecar {
		// A regular container has no startup probe to hold the app: this
		// hook does, the sidecar going first (holdsApp). Kubelet starts
		// the next container once it returns, in the same pass, the
		// moment the proxy serves. Bounded: while the hook runs, kubelet
		// reports nothing of the pod, not even its IP, which the node
		// agent needs to register the pod when meshlet-cni's notice did
		// not reach it (agent restarting); past the timeout kubelet
		// restarts the sidecar, and the IP gets out. A native sidecar
		// keeps its startup probe, which never holds kubelet up.
		c.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{
			Exec: &corev1.ExecAction{Command: []string{meshletProxyCommand, "wait", "-timeout", holdTimeout}}}}
	}
	return c
}

// holdTimeout bounds the regular container's hold (above): far above the
// second or so a proxy takes when its registration is there.
const holdTimeout = "15s"

// holdsApp says the sidecar's postStart hook waits for the proxy: as a
// plain container it then goes first, and kubelet starts the app only
// after it (Istio's holdApplicationUntilProxyStarts, without a setting).
func holdsApp(c corev1.Container) bool {
	return c.Lifecycle != nil && c.Lifecycle.PostStart != nil
}
