package webhook

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/meshlet/meshlet/contract"
)

// envoyLoginSidecarName is data plane envoy's login sidecar, which goes
// right before Envoy (reserved like the sidecars' names).
const envoyLoginSidecarName = contract.EnvoyLoginSidecarName

// envoyLoginNeeded: Envoy gets its token from a login sidecar.
func envoyLoginNeeded(cfg Config) bool {
	return cfg.DataPlane == DataPlaneEnvoy && cfg.ACLAuthMethod != ""
}

// envoyLoginSidecar is `meshlet-proxy login` from meshlet's image, as a
// native sidecar before Envoy: it logs in with the pod's ServiceAccount
// token, as the other data planes' sidecars do (the same meta, so the
// token reaper knows the token's pod), writes Envoy's token file to the
// login volume, and stays to log out when the pod goes. Its startup
// probe passes once the file is there, and only then does kubelet start
// Envoy. base carries the sidecars' environment and security context;
// consulNS is the pod's Consul Enterprise namespace ("": namespaces off),
// where the auth method is found as meshlet's own sidecar finds it.
func envoyLoginSidecar(base corev1.Container, tokenMount corev1.VolumeMount, consulNS string, cfg Config) corev1.Container {
	c := corev1.Container{
		Name: envoyLoginSidecarName, Image: cfg.MeshletImage,
		Env: append([]corev1.EnvVar{}, base.Env...), SecurityContext: base.SecurityContext.DeepCopy(),
		Resources: loginResources(),
		Command:   []string{meshletProxyCommand, "login"},
		VolumeMounts: []corev1.VolumeMount{tokenMount,
			{Name: loginVolume, MountPath: loginDir}},
		StartupProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
				Command: []string{meshletProxyCommand, "wait", "-file", contract.EnvoyADSFile, "-timeout", "1s"}}},
			PeriodSeconds: 1, TimeoutSeconds: 2, FailureThreshold: 300,
		},
	}
	addr := fmt.Sprintf("$(%s):%d", contract.EnvHostIP, cfg.AgentHTTPPort)
	if t := cfg.AgentTLS; t.HTTPSPort != 0 {
		addr = fmt.Sprintf("https://$(%s):%d", contract.EnvHostIP, t.HTTPSPort)
		c.Env = append(c.Env, corev1.EnvVar{Name: contract.EnvConsulCACertPEM, Value: t.CAPEM})
	}
	c.Args = []string{"-http-addr", addr, "-acl-auth-method", cfg.ACLAuthMethod,
		"-acl-bearer-token-file", contract.ServiceAccountTokenFile, "-envoy-ads-file", contract.EnvoyADSFile}
	if t := cfg.AgentTLS; t.HTTPSPort != 0 && t.ServerName != "" {
		c.Args = append(c.Args, "-tls-server-name", t.ServerName)
	}
	if consulNS != "" {
		c.Args = append(c.Args, "-acl-auth-method-namespace", authMethodNamespace(consulNS, cfg.ConsulNamespaces))
	}
	if cfg.NodeAgentPort != contract.NodeAgentHTTPPort {
		c.Args = append(c.Args, "-node-agent-addr", fmt.Sprintf("$(%s):%d", contract.EnvHostIP, cfg.NodeAgentPort))
	}
	return c
}

// loginResources: the login sidecar logs in, then mostly sleeps; it asks
// for little, and has limits so that a namespace's quota that requires
// them admits the pod.
func loginResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("25Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
	}
}
