package webhook

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/lru"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/webhook/envoybootstrap"
)

// envoySidecar runs Envoy with its bootstrap inline (--config-yaml), so no
// init container writes a file for it: kubelet expands $(PROXY_ID) and
// $(HOST_IP) in the argument from the container's env. Over TLS it gets
// its configuration from the Consul agent's gRPC TLS port, verified with
// the CA inline. With ACLs the token comes from the login sidecar
// (envoyLoginSidecar), in the file Envoy reads with -c and merges the
// inline bootstrap into (docs/identity.md).
func envoySidecar(c corev1.Container, p parsed, reg contract.Registration, pod *corev1.Pod, cfg Config) (corev1.Container, error) {
	b := envoybootstrap.Config{
		ProxyID:        proxyIDRef,
		ServiceName:    statsServiceName(p, pod),
		AgentHost:      hostIPRef,
		AgentGRPCPort:  cfg.AgentGRPCPort,
		AdminBind:      "127.0.0.1",
		AdminPort:      contract.EnvoyAdminPort,
		Namespace:      reg.ConsulNamespace,
		TokenFromLogin: envoyLoginNeeded(cfg),
	}
	if t := cfg.AgentTLS; t.GRPCPort != 0 {
		b.AgentGRPCPort, b.AgentCAPEM, b.AgentServerName = t.GRPCPort, t.CAPEM, t.ServerName
	}
	yaml, err := bootstrapYAML(b)
	if err != nil {
		return c, fmt.Errorf("envoy bootstrap: %w", err)
	}
	c.Name, c.Image = envoySidecarName, cfg.EnvoyImage
	c.Command = []string{"envoy"}
	c.Args = append([]string{"--config-yaml", yaml}, p.extraArgs...)
	if b.TokenFromLogin {
		c.Args = append([]string{"-c", contract.EnvoyADSFile}, c.Args...)
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: loginVolume, MountPath: loginDir, ReadOnly: true})
	}
	return c, nil
}

// bootstraps holds rendered bootstraps by their inputs: a service's pods
// share one, and rendering it (checks, document, YAML with its quoting) is
// most of an envoy review's cost (BenchmarkMutate, and the distinct-pods
// row in docs/benchmarks.md#webhook-review). Bounded, so that many services
// cannot grow it without limit.
var bootstraps = lru.New(1024)

func bootstrapYAML(b envoybootstrap.Config) (string, error) {
	if y, ok := bootstraps.Get(b); ok {
		return y.(string), nil
	}
	y, err := b.YAML()
	if err != nil {
		return "", err
	}
	bootstraps.Add(b, y)
	return y, nil
}

// statsServiceName is the bootstrap's node.cluster, which Envoy uses only
// to label its stats: the connect-service annotation when given, else the
// pod's own ServiceAccount (consul-k8s with ACLs requires the two to be
// equal), else its app label. Consul identifies the proxy by its ID.
func statsServiceName(p parsed, pod *corev1.Pod) string {
	switch {
	case p.service != "":
		return p.service
	case pod.Spec.ServiceAccountName != "" && pod.Spec.ServiceAccountName != "default":
		return pod.Spec.ServiceAccountName
	case pod.Labels["app"] != "":
		return pod.Labels["app"]
	}
	return "unnamed"
}
