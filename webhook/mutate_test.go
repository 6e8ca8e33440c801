package webhook

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"

	"github.com/meshlet/meshlet/test/golden"
)

// app is a Deployment's pod as the API server hands it to the webhook:
// generateName, no name yet, one container with a port.
func app(ann map[string]string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-5d9f8c7b6-", Namespace: "shop",
			Labels: map[string]string{"app": "web"}, Annotations: ann},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			SecurityContext:    &corev1.PodSecurityContext{RunAsUser: ptr.To(int64(1000)), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			Containers: []corev1.Container{{Name: "web", Image: "static-server",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
		},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func on(extra ...string) map[string]string {
	m := map[string]string{contract.Inject: "true"}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i]] = extra[i+1]
	}
	return m
}

func consulCfg(mutate ...func(*Config)) Config {
	c := DefaultConfig()
	c.DataPlane, c.ConsulImage = DataPlaneConsul, "meshlet.local/consul:dev"
	c.TransparentProxy, c.OverwriteProbes = false, false // what Validate asks of data plane consul
	for _, m := range mutate {
		m(&c)
	}
	return c
}

// envoyCfg is data plane envoy as the chart renders it: with meshlet's
// image, which its login and metrics-merging sidecars run from.
func envoyCfg(mutate ...func(*Config)) Config {
	c := DefaultConfig()
	c.MeshletImage = "meshlet.local/meshlet:dev"
	for _, m := range mutate {
		m(&c)
	}
	return c
}

// tproxyCfg is the configuration of the golden cases where transparent
// proxy matters: data plane meshlet (consul's has none), always as a
// native sidecar.
func tproxyCfg(mutate ...func(*Config)) Config {
	return meshletCfg(append([]func(*Config){func(c *Config) { c.FastStart = false }}, mutate...)...)
}

func meshletCfg(mutate ...func(*Config)) Config {
	c := DefaultConfig()
	c.DataPlane, c.MeshletImage = DataPlaneMeshlet, "meshlet.local/meshlet:dev"
	for _, m := range mutate {
		m(&c)
	}
	return c
}

var goldenCases = []struct {
	name string
	pod  *corev1.Pod
	ns   string
	cfg  Config
}{
	{"plain-not-annotated", app(nil), "shop", consulCfg()},
	{"opt-in", app(on()), "shop", tproxyCfg()},
	{"tproxy-off", app(on(contract.TransparentProxy, "false")), "shop", consulCfg()},
	{"every-annotation", app(on(
		contract.Service, "web-api",
		contract.ServicePort, "http",
		contract.Upstreams, " db:5432 , cache.infra:6379:dc2,prepared_query:geo-db:7000,",
		contract.ExcludeInboundPorts, "9090, 9091",
		contract.ExcludeOutboundPorts, "443",
		contract.ExcludeOutboundCIDRs, "10.96.0.1/32,fd00::/64",
		contract.ExcludeUIDs, "1001",
		contract.ServiceTags, "v1, canary",
		contract.ServiceMetaPrefix+"team", "payments",
		contract.SidecarCPULimit, "500m",
		contract.SidecarCPURequest, "50m",
		contract.SidecarMemoryLimit, "256Mi",
		contract.SidecarMemoryRequest, "64Mi",
		contract.EnableMetrics, "true",
		contract.EnableMetricsMerging, "true",
		contract.PrometheusScrapePort, "20201",
		contract.ServiceMetricsPort, "8080",
		contract.ServiceMetricsPath, "/stats",
		"consul.hashicorp.com/connect-service-protocol", "http",
	)), "shop", envoyCfg()}, // envoy: every upstream form
	{"probes", app(on(), func(p *corev1.Pod) {
		c := &p.Spec.Containers[0]
		c.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/live", Port: intstr.FromString("http")}}}
		c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt(8080)}}}
		c.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "worker", Image: "w",
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/w", Port: intstr.FromInt(9000), Scheme: corev1.URISchemeHTTPS}}},
			LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt(9000)}}}})
	}), "shop", tproxyCfg()},
	{"probes-not-overwritten", app(on(contract.OverwriteProbes, "false"), func(p *corev1.Pod) {
		p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt(8080)}}}
	}), "shop", tproxyCfg()},
	{"job-with-init-container", app(on(contract.Upstreams, "db:5432"), func(p *corev1.Pod) {
		p.Spec.RestartPolicy = corev1.RestartPolicyNever
		p.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "m"}}
	}), "shop", tproxyCfg()},
	{"regular-container", app(on()), "shop", tproxyCfg(func(c *Config) { c.NativeSidecar = false })},
	{"namespace-mirroring", app(on()), "shop", tproxyCfg(func(c *Config) {
		c.ConsulNamespaces = ConsulNamespaces{Enabled: true, MirroringK8S: true, MirroringK8SPrefix: "k8s-"}
	})},
	{"default-inject", app(nil), "shop", tproxyCfg(func(c *Config) { c.DefaultInject = true })},
	{"false-wins", app(map[string]string{contract.Inject: "false"}), "shop", consulCfg(func(c *Config) { c.DefaultInject = true })},
	{"kube-system", app(on()), "kube-system", consulCfg()},
	{"denied-namespace", app(on()), "shop", consulCfg(func(c *Config) { c.DenyNamespaces = []string{"shop"} })},
	{"not-allowed-namespace", app(on()), "shop", consulCfg(func(c *Config) { c.AllowNamespaces = []string{"other"} })},
	{"host-network", app(on(), func(p *corev1.Pod) { p.Spec.HostNetwork = true }), "shop", consulCfg()},
	{"existing-env-probes-init", app(on(contract.Upstreams, "db:5432,cache:6379"), func(p *corev1.Pod) {
		p.Annotations["team"] = "a/b~c"
		p.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "m", Env: []corev1.EnvVar{{Name: "A", Value: "1"}}}, {Name: "seed", Image: "s"}}
		c := &p.Spec.Containers[0]
		c.Env = []corev1.EnvVar{{Name: "B", Value: "2"}}
		c.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/live", Port: intstr.FromString("http")}}}
		c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8080)}}}
		c.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "worker", Image: "w",
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(9000)}}}})
	}), "shop", tproxyCfg()},
	{"meshlet", app(on()), "shop", meshletCfg()},
	// Consul's built-in proxy on a Consul with ACLs and TLS: its login
	// and CA in a memory volume of its own.
	{"consul-acls-tls", app(on(contract.Service, "web", contract.Upstreams, "db:5432"), withServiceAccountToken, func(p *corev1.Pod) {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	}), "shop", consulCfg(func(c *Config) {
		c.ACLAuthMethod = "consul-k8s-auth-method"
		c.AgentTLS = AgentTLS{HTTPSPort: 8501, CAPEM: "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n", ServerName: "client.dc1.consul"}
	})},
	{"consul-tls", app(on()), "shop", consulCfg(func(c *Config) {
		c.AgentTLS = AgentTLS{HTTPSPort: 8501, CAPEM: "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"}
	})},
	// With ACLs the registration names the auth method, for the node
	// agent's check and the sidecar's login.
	{"meshlet-acls", app(on(contract.Service, "web"), withServiceAccountToken), "shop", meshletCfg(func(c *Config) { c.ACLAuthMethod = "meshlet-k8s" })},
	// Consul Enterprise: the proxy's calls in the pod's Consul namespace,
	// its login in the auth method's (the destination namespace; with
	// mirroring, "default"), an upstream in another namespace admitted.
	{"meshlet-namespaces-acls", app(on(contract.Service, "web", contract.Upstreams, "db.data:5432"), withServiceAccountToken), "shop", meshletCfg(func(c *Config) {
		c.ACLAuthMethod = "meshlet-k8s"
		c.ConsulNamespaces = ConsulNamespaces{Enabled: true, DestinationNamespace: "apps"}
	})},
	{"meshlet-namespace-mirroring-acls", app(on(contract.Service, "web"), withServiceAccountToken), "shop", meshletCfg(func(c *Config) {
		c.ACLAuthMethod = "meshlet-k8s"
		c.ConsulNamespaces = ConsulNamespaces{Enabled: true, MirroringK8S: true, MirroringK8SPrefix: "k8s-"}
	})},
	// TLS to the Consul agent: its HTTPS port, its CA in the environment.
	{"meshlet-tls", app(on()), "shop", meshletCfg(func(c *Config) {
		c.AgentTLS = AgentTLS{HTTPSPort: 8501, CAPEM: "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n", ServerName: "client.dc1.consul"}
	})},
	{"meshlet-metrics", app(on(contract.EnableMetrics, "true")), "shop", meshletCfg()},
	// Merging: the proxy fetches the app's page and serves both, at the
	// path the scraper is sent to.
	{"meshlet-metrics-merging", app(on(contract.EnableMetrics, "true", contract.EnableMetricsMerging, "true",
		contract.ServiceMetricsPort, "9102", contract.ServiceMetricsPath, "/stats", contract.PrometheusScrapePath, "/scrape")), "shop", meshletCfg()},
	// Data plane envoy: the metrics sidecar after Envoy serves the scrape
	// port and path, merging Envoy's page with the app's.
	{"envoy-metrics-merging", app(on(contract.EnableMetrics, "true", contract.EnableMetricsMerging, "true",
		contract.ServiceMetricsPort, "9102", contract.PrometheusScrapePath, "/scrape")), "shop", envoyCfg()},
	// Regular containers: Envoy, then the metrics sidecar, after the app.
	{"envoy-metrics-merging-regular-containers", app(on(contract.EnableMetrics, "true", contract.EnableMetricsMerging, "true")), "shop",
		envoyCfg(func(c *Config) { c.NativeSidecar = false })},
	// With ACLs: login sidecar, Envoy, metrics sidecar.
	{"envoy-metrics-merging-acls", app(on(contract.Service, "web", contract.EnableMetrics, "true", contract.EnableMetricsMerging, "true"),
		withServiceAccountToken), "shop", envoySecureCfg()},
	// A webhook not given meshlet's image has nothing to merge with: a
	// warning, no sidecar.
	{"envoy-metrics-merging-no-meshlet-image", app(on(contract.EnableMetrics, "true", contract.EnableMetricsMerging, "true")), "shop", DefaultConfig()},
	// Consul's built-in proxy has no metrics page: a warning naming what
	// has no effect.
	{"consul-metrics-merging", app(on(contract.EnableMetrics, "true", contract.EnableMetricsMerging, "true",
		contract.ServiceMetricsPort, "9102", contract.ServiceMetricsPath, "/stats")), "shop", consulCfg()},
	// Envoy's arguments with a data plane that runs no Envoy: a warning.
	{"meshlet-envoy-extra-args", app(on(contract.EnvoyExtraArgs, "--log-level debug")), "shop", meshletCfg()},
	// A plain-container sidecar that holds the app: first in the list.
	{"meshlet-regular-container", app(on()), "shop", meshletCfg(func(c *Config) { c.NativeSidecar = false })},
	// -native-sidecar true: native even where a regular container is faster.
	{"meshlet-native", app(on()), "shop", meshletCfg(func(c *Config) { c.FastStart = false })},
	// The regular container lingers after SIGTERM within the pod's grace.
	{"meshlet-grace-period", app(on(), func(p *corev1.Pod) { p.Spec.TerminationGracePeriodSeconds = ptr.To(int64(5)) }), "shop", meshletCfg()},
	// A Job's pod keeps the native sidecar, so that it can complete.
	{"meshlet-job", app(on(), func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyOnFailure }), "shop", meshletCfg()},
	{"envoy", app(on(contract.EnvoyExtraArgs, "--log-level debug  --disable-hot-restart")), "shop", DefaultConfig()},
	{"envoy-namespaces", app(on(contract.Service, "web-api")), "shop", func() Config {
		c := DefaultConfig()
		c.ConsulNamespaces = ConsulNamespaces{Enabled: true, DestinationNamespace: "apps"}
		return c
	}()},
	// Envoy on a Consul with ACLs and TLS: its login sidecar goes first and
	// writes the token file Envoy reads with -c; the inline bootstrap has
	// TLS to 8503 and no gRPC service of its own. The pod's own init
	// container stays after both.
	{"envoy-acls-tls", app(on(contract.Service, "web"), withServiceAccountToken, func(p *corev1.Pod) {
		p.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "migrate"}}
	}), "shop", envoySecureCfg()},
	// Envoy's login sidecar logs in where meshlet's proxy would: in the
	// auth method's namespace (with mirroring, "default").
	{"envoy-namespace-mirroring-acls", app(on(contract.Service, "web"), withServiceAccountToken), "shop", func() Config {
		c := envoySecureCfg()
		c.ConsulNamespaces = ConsulNamespaces{Enabled: true, MirroringK8S: true, MirroringK8SPrefix: "k8s-"}
		return c
	}()},
	// Consul DNS (dns.enableRedirection): the Service's ClusterIP in the
	// redirect config, without a port: every DNS query of the pod.
	{"consul-dns-default", app(on()), "shop", consulDNSCfg(true)},
	{"consul-dns-annotation", app(on(contract.ConsulDNS, "true")), "shop", consulDNSCfg(false)},
	{"consul-dns-opt-out", app(on(contract.ConsulDNS, "false")), "shop", consulDNSCfg(true)},
	// The default on a pod without transparent proxy: a warning, the
	// cluster DNS.
	{"consul-dns-tproxy-off", app(on(contract.TransparentProxy, "false")), "shop", consulDNSCfg(true)},
	{"consul-dns-tproxy-off-annotated", app(on(contract.TransparentProxy, "false", contract.ConsulDNS, "true")), "shop", consulDNSCfg(false)},
	{"consul-dns-data-plane-consul", app(on(contract.ConsulDNS, "true")), "shop", consulCfg(func(c *Config) { c.ConsulDNS.IP = "10.96.0.53" })},
	{"consul-dns-unavailable", app(on()), "shop", consulDNSCfg(true, func(c *Config) {
		c.ConsulDNS.IP, c.ConsulDNS.Unavailable = "", "Service consul/consul-dns, in front of the Consul agents' DNS, does not exist"
	})},
	{"consul-dns-unavailable-annotated", app(on(contract.ConsulDNS, "1")), "shop", consulDNSCfg(false, func(c *Config) { c.ConsulDNS.IP = "" })},
	// TLS alone: no login, Envoy over gRPC TLS.
	{"envoy-tls", app(on()), "shop", func() Config {
		c := DefaultConfig()
		c.AgentTLS = AgentTLS{HTTPSPort: 8501, GRPCPort: 8503, CAPEM: testCAPEM}
		return c
	}()},
}

// consulDNSCfg is data plane meshlet with the Consul DNS Service found,
// redirection on by default or not.
func consulDNSCfg(byDefault bool, mutate ...func(*Config)) Config {
	return tproxyCfg(append([]func(*Config){func(c *Config) { c.ConsulDNS = ConsulDNS{Default: byDefault, IP: "10.96.0.53"} }}, mutate...)...)
}

// testCAPEM stands for the CA bundle given to the chart.
const testCAPEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"

// envoySecureCfg is data plane envoy on a Consul with ACLs and TLS.
func envoySecureCfg() Config {
	c := DefaultConfig()
	c.ACLAuthMethod, c.MeshletImage = "consul-k8s-auth-method", "meshlet.local/meshlet:dev"
	c.AgentTLS = AgentTLS{HTTPSPort: 8501, GRPCPort: 8503, CAPEM: testCAPEM, ServerName: "client.dc1.consul"}
	return c
}

// TestMutateGolden: the JSON patch (sorted by path for reading), warnings
// and decision for a table of pods, against testdata/mutate/<case>.json.
func TestMutateGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			res := Mutate(tc.pod, tc.ns, tc.cfg)
			out := map[string]any{"warnings": res.Warnings, "skipped": res.Skipped}
			if res.Denied != nil {
				out["denied"] = res.Denied.Error()
			}
			ops := append(res.Patch[:0:0], res.Patch...)
			sort.SliceStable(ops, func(i, j int) bool { return ops[i].Path < ops[j].Path })
			out["patch"] = ops
			b, err := json.MarshalIndent(out, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, filepath.Join("mutate", tc.name+".json"), append(b, '\n'))
		})
	}
}

// TestMutateTwiceDenies: the webhook's own output submitted again (a pod
// made from an injected pod's spec) carries a registration this admission
// did not write: it is denied, naming the annotation, for every case it
// injects, and never injected twice. (The webhook is never reinvoked:
// reinvocationPolicy Never.)
func TestMutateTwiceDenies(t *testing.T) {
	for _, tc := range goldenCases {
		res := Mutate(tc.pod, tc.ns, tc.cfg)
		if res.Patch == nil {
			continue
		}
		injected := applyPatch(t, tc.pod, res)
		again := Mutate(injected, tc.ns, tc.cfg)
		if again.Patch != nil || again.Denied == nil || !strings.Contains(again.Denied.Error(), contract.RegistrationKey+": ") ||
			!strings.Contains(again.Denied.Error(), "never copied") {
			t.Errorf("%s: second pass: patch %v, denied %v, skipped %q", tc.name, again.Patch, again.Denied, again.Skipped)
		}
	}
}

// TestOtherInjectorsPods: a pod consul-k8s injected (its status, its
// redirect config, no meshlet registration) is admitted as it is, and
// said to be another injector's.
func TestOtherInjectorsPods(t *testing.T) {
	for name, ann := range map[string]map[string]string{
		"CNI mode": {contract.InjectStatus: "injected", contract.TProxyStatus: "enabled",
			contract.RedirectConfig: `{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001}`},
		"init container mode": {contract.InjectStatus: "injected", contract.TProxyStatus: "enabled"},
	} {
		res := Mutate(app(on(), func(p *corev1.Pod) {
			for k, v := range ann {
				p.Annotations[k] = v
			}
		}), "shop", DefaultConfig())
		if res.Patch != nil || res.Denied != nil || res.Skipped != SkippedOtherInjector {
			t.Errorf("%s: patch %v, denied %v, skipped %q; want admitted as another injector's", name, res.Patch, res.Denied, res.Skipped)
		}
	}
}

// TestPatchReproducesInjection: the patch, applied to the pod as
// submitted, gives exactly the injected pod, for every golden case.
func TestPatchReproducesInjection(t *testing.T) {
	n := 0
	for _, tc := range goldenCases {
		if samePodAfterPatch(t, tc.pod, tc.ns, tc.cfg) {
			n++
		}
	}
	if n < 10 {
		t.Fatalf("only %d golden cases are injected", n)
	}
}

// samePodAfterPatch fails t when the patch applied differs from the
// injected pod; it reports whether the pod was injected.
func samePodAfterPatch(t *testing.T, pod *corev1.Pod, ns string, cfg Config) bool {
	t.Helper()
	res, injected := mutate(pod, ns, cfg)
	if res.Patch == nil {
		return false
	}
	got, err := json.Marshal(applyPatch(t, pod, res))
	if err != nil {
		t.Fatal(err)
	}
	// Through JSON once, as the API server's copy is: a string that is not
	// UTF-8 (only a Go caller can make one) encodes as \ufffd the first
	// time and as the character itself after a round trip.
	want, err := json.Marshal(injected)
	if err != nil {
		t.Fatal(err)
	}
	var rt corev1.Pod
	if err := json.Unmarshal(want, &rt); err != nil {
		t.Fatal(err)
	}
	if want, err = json.Marshal(&rt); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("%s/%s: the patch applied gives\n%s\nbut the injected pod is\n%s", ns, pod.GenerateName, got, want)
	}
	return true
}

func applyPatch(t *testing.T, pod *corev1.Pod, res Result) *corev1.Pod {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := json.Marshal(res.Patch)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := jsonpatch.DecodePatch(pb)
	if err != nil {
		t.Fatal(err)
	}
	out, err := patch.Apply(raw)
	if err != nil {
		t.Fatalf("apply the patch: %v", err)
	}
	var p corev1.Pod
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

// TestMutateDenies: bad values deny the pod with a message naming the
// annotation, the value and what was expected; nothing is patched.
func TestMutateDenies(t *testing.T) {
	cases := []struct {
		name string
		pod  *corev1.Pod
		want []string
	}{
		{"upstream port", app(on(contract.Upstreams, "db:abc")),
			[]string{`consul.hashicorp.com/connect-service-upstreams: "db:abc": port must be a number 1-65535`}},
		{"upstream grammar", app(on(contract.Upstreams, "db")),
			[]string{`"db": expected name[.namespace]:port[:datacenter] or prepared_query:name:port`}},
		{"prepared query grammar", app(on(contract.Upstreams, "prepared_query:q")),
			[]string{`"prepared_query:q": expected prepared_query:name:port`}},
		{"two upstreams on one port", app(on(contract.Upstreams, "a:1234, b:1234")),
			[]string{`"b:1234": local port 1234 is already taken by "a:1234"`}},
		{"bad upstream datacenter", app(on(contract.Upstreams, "a:1:dc.1")), []string{"the datacenter must be a name"}},
		{"service port name", app(on(contract.ServicePort, "grpc")),
			[]string{`consul.hashicorp.com/connect-service-port: "grpc": expected a port number 1-65535 or the name of a port`}},
		{"service name", app(on(contract.Service, "web.api")), []string{`consul.hashicorp.com/connect-service: "web.api"`}},
		{"bool", app(on(contract.TransparentProxy, "yes")),
			[]string{`consul.hashicorp.com/transparent-proxy: "yes": expected "true" or "false"`}},
		{"inject bool", app(map[string]string{contract.Inject: "enabled"}),
			[]string{`consul.hashicorp.com/connect-inject: "enabled": expected "true" or "false"`}},
		{"ports, CIDRs, UIDs, all reported", app(on(
			contract.ExcludeInboundPorts, "80,http",
			contract.ExcludeOutboundPorts, "0",
			contract.ExcludeOutboundCIDRs, "10.0.0.0/33",
			contract.ExcludeUIDs, "root")), []string{
			`consul.hashicorp.com/transparent-proxy-exclude-inbound-ports: "http": expected a port 1-65535 or a range`,
			`consul.hashicorp.com/transparent-proxy-exclude-outbound-ports: "0"`,
			`consul.hashicorp.com/transparent-proxy-exclude-outbound-cidrs: "10.0.0.0/33": expected an IPv4 or IPv6 CIDR`,
			`consul.hashicorp.com/transparent-proxy-exclude-uids: "root": expected a numeric UID`}},
		{"quantity", app(on(contract.SidecarMemoryLimit, "lots")),
			[]string{`consul.hashicorp.com/sidecar-proxy-memory-limit: "lots": expected a resource quantity`}},
		// Kubernetes parses it; comparing it would take hours.
		{"quantity with a huge exponent", app(on(contract.SidecarCPULimit, "1e777777773")),
			[]string{`consul.hashicorp.com/sidecar-proxy-cpu-limit: "1e777777773": expected a resource quantity`}},
		{"quantity with a tiny exponent", app(on(contract.SidecarCPURequest, "1e-777777773")),
			[]string{`consul.hashicorp.com/sidecar-proxy-cpu-request: "1e-777777773": expected a resource quantity`}},
		{"limit below request", app(on(contract.SidecarCPULimit, "10m", contract.SidecarCPURequest, "20m")),
			[]string{"sidecar cpu limit 10m (annotation consul.hashicorp.com/sidecar-proxy-cpu-limit) is below its request 20m (annotation consul.hashicorp.com/sidecar-proxy-cpu-request)"}},
		{"metrics port", app(on(contract.PrometheusScrapePort, "x")),
			[]string{`consul.hashicorp.com/prometheus-scrape-port: "x": expected a port number`}},
		{"metrics path", app(on(contract.PrometheusScrapePath, "metrics")),
			[]string{`consul.hashicorp.com/prometheus-scrape-path: "metrics": expected an HTTP path`}},
		{"extra args quoting", app(on(contract.EnvoyExtraArgs, `--log-level "debug"`)),
			[]string{"consul.hashicorp.com/envoy-extra-args", "without quotes"}},
		{"extra args with a bootstrap", app(on(contract.EnvoyExtraArgs, `--log-level debug --config-path=/etc/envoy.yaml`)),
			[]string{"consul.hashicorp.com/envoy-extra-args", "expected arguments other than --config-path: the webhook gives Envoy its bootstrap"}},
		{"empty meta key", app(on(contract.ServiceMetaPrefix, "x")), []string{"expected a meta key after"}},
		{"transparent proxy on Consul's proxy", app(on(contract.TransparentProxy, "true")),
			[]string{`consul.hashicorp.com/transparent-proxy: "true": data plane consul (Consul's built-in proxy) has no transparent outbound listener: give the upstreams in consul.hashicorp.com/connect-service-upstreams; or use data plane meshlet or envoy`}},
		{"probe rewriting on Consul's proxy", app(on(contract.OverwriteProbes, "true")),
			[]string{`consul.hashicorp.com/transparent-proxy-overwrite-probes: "true": data plane consul (Consul's built-in proxy) serves no expose paths`}},
		{"meta key with a dot", app(on(contract.ServiceMetaPrefix+"team.name", "x")),
			[]string{`the meta key "team.name" must be letters, digits, '-' and '_', at most 128 characters`}},
		{"meta key too long", app(on(contract.ServiceMetaPrefix+strings.Repeat("k", 129), "x")), []string{"at most 128 characters"}},
		{"meta key Consul reserves", app(on(contract.ServiceMetaPrefix+"consul-version", "x")), []string{`"consul-version" starts with "consul-", which Consul reserves`}},
		{"meta key meshlet writes", app(on(contract.ServiceMetaPrefix+"pod-name", "x")), []string{`the meta key "pod-name" is written by meshlet`}},
		{"meta value too long", app(on(contract.ServiceMetaPrefix+"notes", strings.Repeat("v", 513))), []string{"a meta value is at most 512 characters (Consul's limit); this one has 513"}},
		{"too many meta pairs", app(func() map[string]string {
			m := on()
			for i := range 61 {
				m[fmt.Sprintf("%sk%d", contract.ServiceMetaPrefix, i)] = "v"
			}
			return m
		}()), []string{"61 consul.hashicorp.com/service-meta-* annotations: Consul takes 64 meta pairs on a service and meshlet writes 4, so at most 60"}},
		{"app as the proxy UID (pod)", app(on(), func(p *corev1.Pod) { p.Spec.SecurityContext.RunAsUser = ptr.To(int64(5995)) }),
			[]string{`container "web" runs as UID 5995, the sidecar proxy's UID`}},
		{"app as the proxy UID (container)", app(on(), func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: ptr.To(int64(5995))}
		}), []string{`container "web" runs as UID 5995`}},
		{"sidecar's name taken", app(on(), func(p *corev1.Pod) { p.Spec.Containers[0].Name = consulSidecarName }),
			[]string{`container name "consul-sidecar" is the injected sidecar's`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := Mutate(tc.pod, "shop", consulCfg())
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

func TestDeniedBy(t *testing.T) {
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		want []string
	}{
		{"one annotation", app(on(contract.Upstreams, "db:abc")), []string{contract.Upstreams}},
		{"two annotations, one twice", app(on(contract.Upstreams, "db:abc,x:y", contract.ExcludeUIDs, "me")),
			[]string{contract.Upstreams, contract.ExcludeUIDs}},
		{"meta keys fold into one label", app(on(contract.ServiceMetaPrefix, "x")), []string{contract.ServiceMetaPrefix + "*"}},
		{"not an annotation", app(on(), func(p *corev1.Pod) { p.Spec.SecurityContext.RunAsUser = ptr.To(int64(5995)) }), []string{"other"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := Mutate(tc.pod, "shop", consulCfg())
			if res.Denied == nil {
				t.Fatal("not denied")
			}
			if got := DeniedBy(res.Denied); !slices.Equal(got, tc.want) {
				t.Fatalf("DeniedBy(%v) = %v, want %v", res.Denied, got, tc.want)
			}
		})
	}
	if got := DeniedBy(nil); got != nil {
		t.Fatalf("DeniedBy(nil) = %v", got)
	}
}

// TestMutateUpstreamOnProxyPort: an upstream cannot take a port the
// sidecar listens on in the pod, which depends on the data plane,
// transparent proxy and metrics; a port that is free in that setup is fine.
func TestMutateUpstreamOnProxyPort(t *testing.T) {
	envoy := DefaultConfig()
	for _, tc := range []struct {
		name string
		cfg  Config
		ann  []string
		want string // "" admitted
	}{
		{"inbound port", consulCfg(), []string{contract.Upstreams, "db:20000"},
			`"db:20000": local port 20000 is the proxy's inbound port in the pod`},
		{"outbound port, transparent", meshletCfg(), []string{contract.Upstreams, "db:15001"},
			`"db:15001": local port 15001 is the proxy's transparent outbound port in the pod`},
		{"outbound port, not transparent", meshletCfg(), []string{contract.Upstreams, "db:15001", contract.TransparentProxy, "false"}, ""},
		{"Envoy's admin port", envoy, []string{contract.Upstreams, "db:19000"}, `local port 19000 is Envoy's admin port`},
		{"19000 without Envoy", consulCfg(), []string{contract.Upstreams, "db:19000"}, ""},
		{"meshlet's metrics port", meshletCfg(), []string{contract.Upstreams, "db:20200"}, `local port 20200 is the proxy's metrics port`},
		{"the scrape port", consulCfg(), []string{contract.Upstreams, "db:9102", contract.EnableMetrics, "true", contract.PrometheusScrapePort, "9102"},
			`local port 9102 is the proxy's metrics port (prometheus-scrape-port)`},
		{"the second of two", consulCfg(), []string{contract.Upstreams, "a:1234, b:20000"}, `"b:20000": local port 20000`},
		{"a rewritten probe's expose listener", meshletCfg(), []string{contract.Upstreams, "db:20400"},
			`"db:20400": local port 20400 is the expose listener of container "web"'s readiness probe in the pod`},
		{"an expose port no probe uses", meshletCfg(), []string{contract.Upstreams, "db:20300"}, ""},
		{"expose ports with probes left alone", meshletCfg(), []string{contract.Upstreams, "db:20400", contract.OverwriteProbes, "false"}, ""},
		{"the scrape port on the inbound port", meshletCfg(), []string{contract.EnableMetrics, "true", contract.PrometheusScrapePort, "20000"},
			`consul.hashicorp.com/prometheus-scrape-port: "20000": port 20000 is the proxy's inbound port in the pod`},
		{"the merged port on the scrape port", meshletCfg(), []string{contract.EnableMetrics, "true", contract.EnableMetricsMerging, "true",
			contract.PrometheusScrapePort, "9102", contract.MergedMetricsPort, "9102"},
			`consul.hashicorp.com/merged-metrics-port: "9102": port 9102 is the proxy's metrics port (prometheus-scrape-port) in the pod`},
		{"an upstream on the merged port", meshletCfg(), []string{contract.EnableMetrics, "true", contract.EnableMetricsMerging, "true",
			contract.MergedMetricsPort, "20100", contract.Upstreams, "db:20100"},
			`"db:20100": local port 20100 is the merged metrics port (merged-metrics-port) in the pod`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := Mutate(app(on(tc.ann...), withReadinessProbe), "shop", tc.cfg)
			switch {
			case tc.want == "" && res.Denied != nil:
				t.Fatalf("denied: %v", res.Denied)
			case tc.want == "":
			case res.Denied == nil:
				t.Fatalf("admitted, want a denial saying %q", tc.want)
			case !strings.Contains(res.Denied.Error(), tc.want):
				t.Fatalf("denial %q does not say %q", res.Denied, tc.want)
			}
		})
	}
}

func withReadinessProbe(p *corev1.Pod) {
	p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
		HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}}
}

// TestMutateUpstreamFormsOnMeshlet: an upstream in a Consul namespace,
// while namespaces are off, is denied on data plane meshlet, naming the
// upstream and what to do; prepared queries and other datacenters it
// serves (dataplane TestProxyPreparedQuery, TestProxyOtherDatacenter);
// the other data planes take every form.
func TestMutateUpstreamFormsOnMeshlet(t *testing.T) {
	for _, tc := range []struct{ ups, want string }{
		{"prepared_query:geo-db:7000", ""},
		{"db:1234:dc2", ""},
		{"db.team-a:1234", `"db.team-a:1234": a service in Consul namespace team-a, but Consul namespaces are off (global.enableConsulNamespaces): name the service alone`},
		{"db:1234", ""},
	} {
		res := Mutate(app(on(contract.Upstreams, tc.ups)), "shop", meshletCfg())
		switch {
		case tc.want == "" && res.Denied != nil:
			t.Errorf("%s: denied: %v", tc.ups, res.Denied)
		case tc.want != "" && (res.Denied == nil || !strings.Contains(res.Denied.Error(), tc.want)):
			t.Errorf("%s: %v, want a denial saying %s", tc.ups, res.Denied, tc.want)
		}
		for _, cfg := range []Config{DefaultConfig(), consulCfg()} {
			if res := Mutate(app(on(contract.Upstreams, tc.ups)), "shop", cfg); res.Denied != nil {
				t.Errorf("%s on data plane %s: denied: %v", tc.ups, cfg.DataPlane, res.Denied)
			}
		}
	}
}

// TestMutateNamespaceUpstreamOnMeshlet: with Consul namespaces on, data
// plane meshlet's proxy takes an upstream in another namespace: the
// registration carries it, and the proxy follows that namespace
// (dataplane's TestProxyConsulNamespaces).
func TestMutateNamespaceUpstreamOnMeshlet(t *testing.T) {
	for _, ns := range []ConsulNamespaces{{Enabled: true, DestinationNamespace: "apps"}, {Enabled: true, MirroringK8S: true}} {
		res := Mutate(app(on(contract.Upstreams, "db.team-a:1234")), "shop", meshletCfg(func(c *Config) { c.ConsulNamespaces = ns }))
		if res.Denied != nil || res.Patch == nil {
			t.Fatalf("namespaces %+v: denied %v, skipped %q", ns, res.Denied, res.Skipped)
		}
		pod := applyPatch(t, app(on(contract.Upstreams, "db.team-a:1234")), res)
		reg, err := contract.DecodeRegistration(pod.Annotations[contract.RegistrationKey])
		if err != nil {
			t.Fatal(err)
		}
		if len(reg.Upstreams) != 1 || reg.Upstreams[0].Namespace != "team-a" || reg.Upstreams[0].Name != "db" {
			t.Errorf("namespaces %+v: upstreams %+v, want db in team-a", ns, reg.Upstreams)
		}
	}
}

// TestMutateUpstreamEnvCollisions: two upstreams whose environment
// variables would be the same are denied, naming both.
func TestMutateUpstreamEnvCollisions(t *testing.T) {
	for _, tc := range []struct{ ups, want string }{
		{"db:1234, db:1235:dc2", `"db:1235:dc2": its environment variables DB_CONNECT_SERVICE_HOST and _PORT would be "db:1234"'s too`},
		{"a-b:1234, a_b:1235", `"a_b:1235": its environment variables A_B_CONNECT_SERVICE_HOST and _PORT would be "a-b:1234"'s too`},
		{"db.ns1:1234, db.ns2:1235", `"db.ns2:1235": its environment variables DB_CONNECT_SERVICE_HOST`},
		{"db:1234, db-2:1235", ""},
	} {
		res := Mutate(app(on(contract.Upstreams, tc.ups)), "shop", meshletCfg())
		switch {
		case tc.want == "" && res.Denied != nil:
			t.Errorf("%s: denied: %v", tc.ups, res.Denied)
		case tc.want != "" && (res.Denied == nil || !strings.Contains(res.Denied.Error(), tc.want)):
			t.Errorf("%s: %v, want a denial saying %s", tc.ups, res.Denied, tc.want)
		}
	}
}

// TestMutateDeniesWrittenAnnotations: the annotations only meshlet writes
// cannot come from the pod template, with transparent proxy on or off.
func TestMutateDeniesWrittenAnnotations(t *testing.T) {
	for _, key := range []string{contract.TProxyStatus, contract.RedirectConfig, contract.RegistrationKey} {
		for _, tproxy := range []string{"true", "false"} {
			res := Mutate(app(on(key, "{}", contract.TransparentProxy, tproxy)), "shop", consulCfg())
			want := key + `: "{}": written by meshlet at injection; remove it from the pod template`
			if res.Denied == nil || !strings.Contains(res.Denied.Error(), want) {
				t.Errorf("%s with transparent-proxy %s: got %v, want a denial saying %q", key, tproxy, res.Denied, want)
			}
		}
	}
}
