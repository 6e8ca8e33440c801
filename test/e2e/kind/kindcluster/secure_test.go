package kindcluster

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecureConsulFiles: the files make kind-up SECURE=1 puts in the
// Consul Secrets. Each node's client agent serves HTTPS on 8501 and gRPC
// TLS on 8503 at its node's IP, plain HTTP and gRPC off, default deny, with
// its own agent token, joining the server by its DNS name; the server has
// the management token; the one client certificate verifies for every
// node's IP with the CA, and the server's for its TLS name.
func TestSecureConsulFiles(t *testing.T) {
	c := &Cluster{Root: t.TempDir()}
	nodes := []string{"cp", "w1", "w2"}
	ips := []string{"172.30.0.2", "172.30.0.3", "172.30.0.4"}
	tokens, err := c.writeSecureConsulFiles(nodes, ips)
	if err != nil {
		t.Fatal(err)
	}
	read := func(p ...string) string {
		t.Helper()
		b, err := os.ReadFile(c.dir(append([]string{"consul"}, p...)...))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	mgmt := strings.TrimSpace(read("management-token"))
	if got := strings.TrimSpace(read("server-config", "management-token")); got != mgmt || len(mgmt) != 36 {
		t.Errorf("management tokens %q (host) and %q (server's Secret): want one UUID", mgmt, got)
	}
	if len(tokens) != len(nodes)+1 || tokens[consulServerNode] == "" {
		t.Errorf("agent tokens for %d agents, want the server's and one per node (%d)", len(tokens), len(nodes))
	}
	server := read("server-config", "server.hcl")
	for _, want := range []string{`initial_management = "` + mgmt + `"`, `default_policy = "deny"`, "http = -1", "https = 8501",
		`bind_addr = "{{ GetPrivateIP }}"`, `cert_file = "/consul/tls/server.crt"`, `data_dir = "/consul/server"`} {
		if !strings.Contains(server, want) {
			t.Errorf("server.hcl lacks %q:\n%s", want, server)
		}
	}
	for i, n := range nodes {
		hcl := read("client-config", n+".hcl")
		for _, want := range []string{`node_name = "` + n + `"`, `bind_addr = "` + ips[i] + `"`, `client_addr = "` + ips[i] + ` 127.0.0.1"`,
			"http = -1", "https = 8501", "grpc = -1", "grpc_tls = 8503", `default_policy = "deny"`,
			`agent = "` + tokens[n] + `"`, `retry_join = ["` + consulServerJoin + `"]`, `cert_file = "/consul/tls/client.crt"`} {
			if !strings.Contains(hcl, want) {
				t.Errorf("%s.hcl lacks %q:\n%s", n, want, hcl)
			}
		}
		if got := strings.TrimSpace(read("client-config", n+".token")); got != tokens[n] {
			t.Errorf("%s.token %q, want its agent token %q", n, got, tokens[n])
		}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(read("tls", "ca.crt"))) {
		t.Fatal("ca.crt holds no certificate")
	}
	for _, tc := range []struct{ file, name string }{
		{"client", ips[0]}, {"client", ips[1]}, {"client", ips[2]}, {"client", "127.0.0.1"},
		{"server", "server." + consulDatacenter + ".consul"}, {"server", "127.0.0.1"},
	} {
		pair, err := tls.LoadX509KeyPair(filepath.Join(c.dir("consul", "tls"), tc.file+".crt"), filepath.Join(c.dir("consul", "tls"), tc.file+".key"))
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: tc.name}); err != nil {
			t.Errorf("%s.crt for %s: %v", tc.file, tc.name, err)
		}
	}
}
