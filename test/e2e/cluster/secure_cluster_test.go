package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEnvFile: .cluster/env gives the consul CLI what each mode needs, and
// the secure one names the management token's file without holding it.
func TestEnvFile(t *testing.T) {
	for _, secure := range []bool{false, true} {
		c := New(t.TempDir())
		c.Secure = secure
		if err := os.MkdirAll(c.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := c.writeEnv(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(c.Dir, "env"))
		if err != nil {
			t.Fatal(err)
		}
		env := string(b)
		want := []string{"export CONSUL_HTTP_ADDR=10.244.0.1:8500\n", "unset CONSUL_CACERT CONSUL_HTTP_TOKEN CONSUL_HTTP_TOKEN_FILE\n"}
		if secure {
			want = []string{"export CONSUL_HTTP_ADDR=https://10.244.0.1:8501\n",
				"export CONSUL_CACERT=" + filepath.Join(c.Dir, "consul", "ca-bundle.pem") + "\n",
				`export CONSUL_HTTP_TOKEN="$(cat ` + filepath.Join(c.Dir, "consul", "management-token") + `)"` + "\n"}
		}
		for _, w := range want {
			if !strings.Contains(env, w) {
				t.Errorf("secure=%v: the env file lacks %q:\n%s", secure, w, env)
			}
		}
	}
}

// TestLocalSecureConsulPorts: the secure cluster's Consul client agent
// serves HTTPS and gRPC TLS on the official chart's ports at the node's
// address, and nothing on the plain ones, which fixedPorts then lists.
func TestLocalSecureConsulPorts(t *testing.T) {
	c := New(t.TempDir())
	c.Secure = true
	held := map[hostPort]bool{}
	for _, p := range c.fixedPorts() {
		held[p] = true
	}
	for _, p := range []hostPort{tcp(NodeIP, ConsulHTTPSPort, "consul-client"), tcp(NodeIP, ConsulGRPCTLSPort, "consul-client")} {
		if !held[p] {
			t.Errorf("fixedPorts of a secure cluster lack %+v", p)
		}
	}
	for p := range held {
		if p.port == ConsulHTTPPort || p.port == ConsulGRPCPort {
			t.Errorf("fixedPorts of a secure cluster list the plain port %+v", p)
		}
	}
}
