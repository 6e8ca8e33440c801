package server

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshlet/meshlet/test/testpki"
	"github.com/meshlet/meshlet/webhook"
)

func TestFlags(t *testing.T) {
	files := []string{"-tls-cert-file", "/c", "-tls-key-file", "/k"}
	for _, tc := range []struct {
		name  string
		args  []string
		check func(options) bool
		err   string
	}{
		{name: "defaults are the chart's", args: files, check: func(o options) bool {
			d := webhook.DefaultConfig()
			return slices.Equal(o.cfg.AllowNamespaces, []string{"*"}) && o.cfg.DataPlane == d.DataPlane &&
				o.cfg.TransparentProxy && o.cfg.OverwriteProbes && o.native == "auto" &&
				o.cfg.Resources.Limits.Memory().String() == "100Mi" && o.cfg.Resources.Requests.Cpu().String() == "100m"
		}},
		{name: "namespaces repeated and comma lists", args: append([]string{"-allow-k8s-namespace", "a,b", "-allow-k8s-namespace", "c", "-deny-k8s-namespace", "x"}, files...),
			check: func(o options) bool {
				return slices.Equal(o.cfg.AllowNamespaces, []string{"a", "b", "c"}) && slices.Equal(o.cfg.DenyNamespaces, []string{"x"})
			}},
		{name: "empty resource means none", args: append([]string{"-default-sidecar-proxy-cpu-limit", ""}, files...),
			check: func(o options) bool { _, ok := o.cfg.Resources.Limits[corev1.ResourceCPU]; return !ok }},
		{name: "self-managed names its secret after the service", args: []string{"-tls-self-managed", "-service-name", "wh", "-service-namespace", "meshlet", "-webhook-config-name", "meshlet"},
			check: func(o options) bool { return o.secretName == "wh-tls" }},
		{name: "native false", args: append([]string{"-native-sidecar", "false"}, files...),
			check: func(o options) bool { return !o.cfg.NativeSidecar }},
		{name: "native true: everywhere", args: append([]string{"-native-sidecar", "true"}, files...),
			check: func(o options) bool { return o.cfg.NativeSidecar && !o.cfg.FastStart }},
		{name: "native auto: per pod", args: files,
			check: func(o options) bool { return o.cfg.FastStart }},
		{name: "ACL auth method", args: append([]string{"-acl-auth-method", "meshlet-k8s"}, files...),
			check: func(o options) bool { return o.cfg.ACLAuthMethod == "meshlet-k8s" }},
		{name: "no ACL auth method by default", args: files,
			check: func(o options) bool { return o.cfg.ACLAuthMethod == "" }},
		{name: "servers without a CA", args: append([]string{"-consul-server-addr", "consul-server.consul.svc:8501"}, files...),
			err: "-consul-server-addr consul-server.consul.svc:8501 needs -consul-ca-file"},
		{name: "servers address not host:port", args: append([]string{"-consul-server-addr", "consul-server"}, files...),
			err: `-consul-server-addr "consul-server": expected host:port`},
		{name: "gRPC TLS port", args: append([]string{"-consul-grpc-tls-port", "8503"}, files...),
			check: func(o options) bool { return o.cfg.AgentTLS.GRPCPort == 8503 }},
		{name: "Consul DNS off, no address: pods asking for it are told why", args: files,
			check: func(o options) bool {
				return !o.cfg.ConsulDNS.Default && o.cfg.ConsulDNS.Unavailable == webhook.NoConsulDNS
			}},
		{name: "Consul DNS by Service", args: append([]string{"-enable-consul-dns", "-consul-dns-service", "consul/consul-dns"}, files...),
			check: func(o options) bool {
				return o.cfg.ConsulDNS.Default && o.dnsService == "consul/consul-dns" && o.cfg.ConsulDNS.Unavailable == ""
			}},
		{name: "Consul DNS by address", args: append([]string{"-enable-consul-dns=true", "-consul-dns-ip", "10.96.0.53"}, files...),
			check: func(o options) bool { return o.cfg.ConsulDNS.Default && o.cfg.ConsulDNS.IP == "10.96.0.53" }},
		{name: "Consul DNS by both", args: append([]string{"-consul-dns-service", "consul/consul-dns", "-consul-dns-ip", "10.96.0.53"}, files...),
			err: "-consul-dns-service and -consul-dns-ip exclude each other"},
		{name: "Consul DNS on without an address", args: append([]string{"-enable-consul-dns"}, files...),
			err: "-enable-consul-dns needs Consul DNS's address: -consul-dns-service or -consul-dns-ip"},
		{name: "Consul DNS Service not namespace/name", args: append([]string{"-consul-dns-service", "consul-dns"}, files...),
			err: `-consul-dns-service "consul-dns": expected namespace/name of a Service, such as consul/consul-dns`},
		{name: "bad quantity", args: append([]string{"-default-sidecar-proxy-memory-limit", "lots"}, files...),
			err: `-default-sidecar-proxy-memory-limit "lots": expected a resource quantity`},
		{name: "bad native", args: append([]string{"-native-sidecar", "yes"}, files...), err: `-native-sidecar "yes": expected auto, true or false`},
		{name: "no certificate", args: nil, err: "no serving certificate"},
		{name: "both certificate modes", args: append([]string{"-tls-self-managed"}, files...), err: "exclude each other"},
		{name: "cert without key", args: []string{"-tls-cert-file", "/c"}, err: "go together"},
		{name: "self-managed without service", args: []string{"-tls-self-managed", "-service-namespace", "x"}, err: "needs -service-name"},
		{name: "bad listen", args: append([]string{"-listen", "8443"}, files...), err: `-listen "8443"`},
		{name: "stray argument", args: append(files, "extra"), err: "unexpected arguments"},
		{name: "unknown flag", args: []string{"-inject-everything"}, err: "flag provided but not defined: -inject-everything"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := flags(tc.args, io.Discard)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(o) {
				t.Fatalf("options %+v", o)
			}
		})
	}
}

func TestNativeSidecarSupported(t *testing.T) {
	for _, tc := range []struct {
		major, minor string
		want         bool
		err          bool
	}{
		{"1", "28", false, false}, {"1", "29", true, false}, {"1", "34", true, false},
		{"1", "30+", true, false}, {"2", "0", true, false}, {"1", "x", false, true},
	} {
		d := &fakediscovery.FakeDiscovery{Fake: &k8stesting.Fake{}, FakedServerVersion: &version.Info{Major: tc.major, Minor: tc.minor}}
		got, err := nativeSidecarSupported(d)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("%s.%s: %v, %v; want %v (error %v)", tc.major, tc.minor, got, err, tc.want, tc.err)
		}
	}
}

// TestConsulCAFile: -consul-ca-file's certificates reach the sidecars as
// PEM; a file holding none, or a key, is refused naming it.
func TestConsulCAFile(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "Consul CA")
	caPEM := ca.PEM
	_, keyPEM := ca.Leaf(t, "client.dc1.consul", nil, nil)
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	files := []string{"-tls-cert-file", "/c", "-tls-key-file", "/k"}
	o, err := flags(append([]string{"-consul-https-port", "8501", "-consul-ca-file", write("ca.crt", caPEM), "-consul-tls-server-name", "client.dc1.consul"}, files...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.AgentTLS != (webhook.AgentTLS{HTTPSPort: 8501, CAPEM: caPEM, ServerName: "client.dc1.consul"}) {
		t.Errorf("AgentTLS %+v", o.cfg.AgentTLS)
	}
	for name, tc := range map[string]struct{ content, want string }{
		"empty": {"", "holds no PEM certificate"},
		"key":   {string(keyPEM), "holds a EC PRIVATE KEY block: expected only CERTIFICATE blocks"},
		"junk":  {"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n", "certificate 1"},
	} {
		path := write(name, tc.content)
		_, err := flags(append([]string{"-consul-ca-file", path}, files...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), "-consul-ca-file: ") || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming the flag and %s and saying %q", name, err, path, tc.want)
		}
	}
}
