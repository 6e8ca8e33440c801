package webhook

import (
	"cmp"
	"fmt"
	"net"
	"strconv"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/contract"
)

// meshletProxyCommand is the proxy's own binary in meshlet's image: the
// `meshlet proxy` code without the node agent's and the webhook's, so that
// each pod's sidecar holds less memory (cmd/meshlet-proxy).
const meshletProxyCommand = "/meshlet-proxy"

// meshletSidecar runs `meshlet proxy` as meshlet-proxy from meshlet's
// image. The proxy finds its registration by
// $PROXY_ID and waits for the node agent to make it, so it needs no retry
// loop around it; kubelet expands $(HOST_IP) from the env.
func meshletSidecar(c corev1.Container, reg contract.Registration, pod *corev1.Pod, pl placement, cfg Config) corev1.Container {
	c.Name, c.Image = meshletSidecarName, cfg.MeshletImage
	metrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(contract.ProxyMetricsPort))
	var metricsArgs []string
	if m := reg.Metrics; m != nil {
		// Where the pod's prometheus.io annotations send the scraper.
		metrics = ":" + strconv.Itoa(m.ScrapePort)
		if m.ScrapePath != "/metrics" {
			metricsArgs = append(metricsArgs, "-metrics-path", m.ScrapePath)
		}
		if u := appMetricsURL(reg); u != "" {
			metricsArgs = append(metricsArgs, "-merge-app-metrics", u)
		}
	}
	c.Command = []string{meshletProxyCommand}
	c.Args = append([]string{"-http-addr", fmt.Sprintf("$(%s):%d", contract.EnvHostIP, cfg.AgentHTTPPort), "-metrics-addr", metrics}, metricsArgs...)
	if t := cfg.AgentTLS; t.HTTPSPort != 0 {
		c.Args[1] = fmt.Sprintf("https://$(%s):%d", contract.EnvHostIP, t.HTTPSPort)
		c.Env = append(c.Env, corev1.EnvVar{Name: contract.EnvConsulCACertPEM, Value: t.CAPEM})
		if t.ServerName != "" {
			c.Args = append(c.Args, "-tls-server-name", t.ServerName)
		}
	}
	if reg.ConsulNamespace != "" {
		// Consul Enterprise: its registration, leaf and authorizations are
		// in the pod's Consul namespace. Without namespaces no flag, and
		// the proxy sends no ns=, which Consul without them refuses.
		c.Args = append(c.Args, "-consul-namespace", reg.ConsulNamespace)
	}
	if m, ok := serviceAccountTokenMount(pod); ok && cfg.ACLAuthMethod != "" {
		// Its own identity: a login with the pod's ServiceAccount token
		// (checkIdentity made sure the pod has it).
		c.Args = append(c.Args, "-acl-auth-method", cfg.ACLAuthMethod, "-acl-bearer-token-file", contract.ServiceAccountTokenFile)
		if reg.ConsulNamespace != "" {
			c.Args = append(c.Args, "-acl-auth-method-namespace", authMethodNamespace(reg.ConsulNamespace, cfg.ConsulNamespaces))
		}
		c.VolumeMounts = append(c.VolumeMounts, m)
		if cfg.NodeAgentPort != contract.NodeAgentHTTPPort {
			// Where a refused login is reported; the proxy's default
			// is the contract's port.
			c.Args = append(c.Args, "-node-agent-addr", fmt.Sprintf("$(%s):%d", contract.EnvHostIP, cfg.NodeAgentPort))
		}
	}
	if pl == placedFirst {
		// A regular container has no startup probe to hold the app: this
		// hook does, the sidecar going first. Kubelet starts the next
		// container once it returns, in the same pass, the moment the
		// proxy serves. Bounded: while the hook runs, kubelet
		// reports nothing of the pod, not even its IP, which the node
		// agent needs to register the pod when meshlet-cni's notice did
		// not reach it (the node agent restarting). Past the timeout the
		// hook lets the app start and the pass end; the IP gets out, the
		// node agent registers the pod and the proxy, still running,
		// serves a moment later. Failing the hook instead would have kubelet kill the
		// sidecar and restart it only after its back-off (10 s). A native
		// sidecar keeps its startup probe, which never holds kubelet up.
		c.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{
			Exec: &corev1.ExecAction{Command: []string{meshletProxyCommand, "wait", "-timeout", holdTimeout, "-continue-on-timeout"}}}}
		// It also gets SIGTERM with the app, not after it as a native
		// sidecar does: it keeps serving until the app is done, within
		// the pod's grace period (kubelet kills it at its end anyway).
		grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
		if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
			grace = *g
		}
		if grace > 0 {
			c.Args = append(c.Args, "-linger", strconv.FormatInt(grace, 10)+"s")
		}
	}
	return c
}

// authMethodNamespace is the Consul namespace of the auth method a pod in
// Consul namespace ns logs in to: with mirroring, the one auth method in
// "default", whose namespace rules put each token in its pod's namespace;
// otherwise the destination namespace, the pod's own. The official
// Consul chart creates the auth method there.
func authMethodNamespace(ns string, c ConsulNamespaces) string {
	if c.MirroringK8S {
		return "default"
	}
	return ns
}

// appMetricsURL is the app's metrics page the proxy merges into its own
// (service-metrics-port, default the service's port; service-metrics-path,
// default /metrics); "" when merging is off or the app has no port.
func appMetricsURL(reg contract.Registration) string {
	m := reg.Metrics
	if m == nil || !m.Merging {
		return ""
	}
	port := cmp.Or(m.ServiceMetricsPort, reg.Port)
	if port == 0 {
		return ""
	}
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) + cmp.Or(m.ServiceMetricsPath, "/metrics")
}

// holdTimeout bounds the regular container's hold (above): the
// registration is the proxy's one wait that can be long (the node agent
// missing the pod); past this the app starts and the proxy follows.
const holdTimeout = "15s"
