package webhook

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/contract"
)

// TestIdentityWithACLs: with an auth method, a pod is admitted only when
// its sidecar can log in as its Consul service; without one nothing
// changes.
func TestIdentityWithACLs(t *testing.T) {
	acls := func(c *Config) { c.ACLAuthMethod = "meshlet-k8s" }
	sa := func(name string) func(*corev1.Pod) {
		return func(p *corev1.Pod) { p.Spec.ServiceAccountName = name }
	}
	noToken := func(p *corev1.Pod) { p.Spec.Containers[0].VolumeMounts = nil }
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		cfg  Config
		want []string // the denial says each; none: admitted and injected
	}{
		{"service named like the ServiceAccount", app(on(contract.Service, "web"), withServiceAccountToken), meshletCfg(acls), nil},
		{"no service annotation: the node agent checks the Service's name", app(on(), withServiceAccountToken), meshletCfg(acls), nil},
		{"another service than the ServiceAccount", app(on(contract.Service, "static-server"), sa("static-client"), withServiceAccountToken), meshletCfg(acls),
			[]string{`annotation consul.hashicorp.com/connect-service is "static-server" but the pod's ServiceAccount is "static-client"`, "auth method meshlet-k8s"}},
		{"ServiceAccount default", app(on(contract.Service, "web"), sa("default"), withServiceAccountToken), meshletCfg(acls),
			[]string{`the pod runs as ServiceAccount "default"`, `"default" gets no identity`}},
		{"no ServiceAccount is default", app(on(), sa(""), withServiceAccountToken), meshletCfg(acls),
			[]string{`the pod runs as ServiceAccount "default"`}},
		{"reported with the pod's other problems", app(on(contract.Service, "db"), func(p *corev1.Pod) { p.Spec.Containers[0].Name = consulSidecarName }, withServiceAccountToken), meshletCfg(acls),
			[]string{`container name "consul-sidecar"`, `connect-service is "db" but the pod's ServiceAccount is "web"`}},
		{"no ServiceAccount token mounted", app(on(contract.Service, "web"), withServiceAccountToken, noToken), meshletCfg(acls),
			[]string{"no container of the pod mounts its ServiceAccount token at /var/run/secrets/kubernetes.io/serviceaccount"}},
		{"without ACLs another service is fine", app(on(contract.Service, "static-server"), sa("static-client")), meshletCfg(), nil},
		{"without ACLs default is fine", app(on(), sa("default")), consulCfg(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := Mutate(tc.pod, "shop", tc.cfg)
			if len(tc.want) == 0 {
				if res.Denied != nil || res.Patch == nil {
					t.Fatalf("denied %v, patch %d ops; want it injected", res.Denied, len(res.Patch))
				}
				return
			}
			if res.Denied == nil || res.Patch != nil {
				t.Fatalf("admitted (patch %d ops), want a denial", len(res.Patch))
			}
			for _, w := range tc.want {
				if !strings.Contains(res.Denied.Error(), w) {
					t.Errorf("denial %q does not say %q", res.Denied, w)
				}
			}
		})
	}
}

// withServiceAccountToken mounts the pod's ServiceAccount token in its
// container, as the API server's ServiceAccount admission does before the
// webhooks run.
func withServiceAccountToken(p *corev1.Pod) {
	p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "kube-api-access-x7k2p", VolumeSource: corev1.VolumeSource{
		Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}}})
	for i := range p.Spec.Containers {
		p.Spec.Containers[i].VolumeMounts = append(p.Spec.Containers[i].VolumeMounts, corev1.VolumeMount{
			Name: "kube-api-access-x7k2p", MountPath: serviceAccountTokenDir, ReadOnly: true})
	}
}

func TestConfigACLAuthMethod(t *testing.T) {
	c := meshletCfg(func(c *Config) { c.ACLAuthMethod = "meshlet-k8s" })
	if err := c.Validate(); err != nil {
		t.Fatalf("auth method meshlet-k8s: %v", err)
	}
	c.ACLAuthMethod = " meshlet-k8s"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `ACL auth method " meshlet-k8s": expected a Consul auth method's name`) {
		t.Fatalf("auth method with a space: %v, want an error naming it", err)
	}
	if err := consulCfg(func(c *Config) { c.ACLAuthMethod = "meshlet-k8s" }).Validate(); err != nil {
		t.Errorf("auth method with data plane consul: %v", err)
	}
	envoy := consulCfg(func(c *Config) {
		c.DataPlane, c.EnvoyImage, c.ACLAuthMethod, c.MeshletImage = DataPlaneEnvoy, "envoy", "meshlet-k8s", "meshlet.local/meshlet:dev"
	})
	if err := envoy.Validate(); err != nil {
		t.Errorf("auth method with data plane envoy: %v", err)
	}
	envoy.NativeSidecar = false
	if err := envoy.Validate(); err == nil || !strings.Contains(err.Error(), "ACL auth method meshlet-k8s with data plane envoy needs native sidecars") {
		t.Errorf("auth method with data plane envoy and regular containers: %v, want it refused", err)
	}
	envoy.NativeSidecar, envoy.MeshletImage = true, ""
	if err := envoy.Validate(); err == nil || !strings.Contains(err.Error(), "needs meshlet's image") {
		t.Errorf("auth method with data plane envoy and no meshlet image: %v, want it refused", err)
	}
}

// TestConfigConsulDataPlaneDefaults: Consul's built-in proxy cannot have
// transparent proxy or probe rewriting on by default.
func TestConfigConsulDataPlaneDefaults(t *testing.T) {
	if err := consulCfg().Validate(); err != nil {
		t.Fatalf("data plane consul with both off: %v", err)
	}
	for name, mut := range map[string]func(*Config){
		"transparent proxy": func(c *Config) { c.TransparentProxy = true },
		"probe rewriting":   func(c *Config) { c.OverwriteProbes = true },
	} {
		if err := consulCfg(mut).Validate(); err == nil || !strings.Contains(err.Error(), "must be off by default with it") {
			t.Errorf("data plane consul with %s on: %v, want it refused", name, err)
		}
	}
}

func TestConfigAgentTLS(t *testing.T) {
	ca := "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "": valid
	}{
		{"meshlet over HTTPS", meshletCfg(func(c *Config) { c.AgentTLS = AgentTLS{HTTPSPort: 8501, CAPEM: ca} }), ""},
		{"consul over HTTPS", consulCfg(func(c *Config) { c.AgentTLS = AgentTLS{HTTPSPort: 8501, CAPEM: ca} }), ""},
		{"envoy, plain HTTP", DefaultConfig(), ""},
		{"without the CA", meshletCfg(func(c *Config) { c.AgentTLS = AgentTLS{HTTPSPort: 8501} }), "HTTPS port 8501 without its CA"},
		{"envoy over gRPC TLS", func() Config {
			c := DefaultConfig()
			c.AgentTLS = AgentTLS{HTTPSPort: 8501, GRPCPort: 8503, CAPEM: ca}
			return c
		}(), ""},
		{"envoy without the gRPC TLS port", func() Config { c := DefaultConfig(); c.AgentTLS = AgentTLS{HTTPSPort: 8501, CAPEM: ca}; return c }(),
			"HTTPS port 8501 with data plane envoy but no gRPC TLS port"},
		{"gRPC TLS alone", func() Config { c := DefaultConfig(); c.AgentTLS = AgentTLS{GRPCPort: 8503, CAPEM: ca}; return c }(),
			"gRPC TLS port 8503 without its HTTPS port"},
		{"gRPC TLS port out of range", meshletCfg(func(c *Config) { c.AgentTLS = AgentTLS{HTTPSPort: 8501, GRPCPort: -1, CAPEM: ca} }),
			"gRPC TLS port -1: expected a port"},
		{"port out of range", meshletCfg(func(c *Config) { c.AgentTLS = AgentTLS{HTTPSPort: 70000, CAPEM: ca} }), "HTTPS port 70000: expected a port"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
}

// TestNodeAgentPortToSidecar: a node agent on another port than the
// contract's (the chart's agent.port) is where the sidecar reports a
// refused login; on the contract's port the sidecar needs no flag.
func TestNodeAgentPortToSidecar(t *testing.T) {
	for _, tc := range []struct {
		port int
		want []string
	}{{contract.NodeAgentHTTPPort, nil}, {9500, []string{"-node-agent-addr", "$(HOST_IP):9500"}}} {
		cfg := meshletCfg(func(c *Config) { c.ACLAuthMethod, c.NodeAgentPort = "meshlet-k8s", tc.port })
		pod := app(on(contract.Service, "web"), withServiceAccountToken)
		res := Mutate(pod, "shop", cfg)
		if res.Denied != nil {
			t.Fatal(res.Denied)
		}
		var args []string
		got := applyPatch(t, pod, res)
		for _, c := range append(got.Spec.InitContainers, got.Spec.Containers...) {
			if c.Name == meshletSidecarName {
				args = c.Args
			}
		}
		i := slices.Index(args, "-node-agent-addr")
		switch {
		case tc.want == nil && i >= 0:
			t.Errorf("port %d: the sidecar got %q; want the proxy's default", tc.port, args[i:])
		case tc.want != nil && (i < 0 || !slices.Equal(args[i:i+2], tc.want)):
			t.Errorf("port %d: the sidecar's args %q lack %q", tc.port, args, tc.want)
		}
	}
	if err := meshletCfg(func(c *Config) { c.NodeAgentPort = 0 }).Validate(); err == nil || !strings.Contains(err.Error(), "node agent port 0") {
		t.Errorf("node agent port 0: %v", err)
	}
}
