package dataplane

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/testpki"
)

// consulOpts are consulAgentsIn's options.
type consulOpts struct {
	// management, when set, turns ACLs on in both agents (default policy
	// deny), as their agent token too; the client returned uses it.
	management string
	// tls, when set, makes the client agent serve HTTPS only, on the port
	// consulAgentsIn returns, with a certificate of a CA made for the test;
	// the client returned trusts that CA.
	tls *consulTLS
	// wan, when set, is the server's WAN gossip port: a second
	// datacenter's server joins there (secondDatacenter).
	wan int
}

// consulTLS is the client agent's HTTPS: CAPEM is filled in by configure.
type consulTLS struct {
	CAPEM string
}

// configure writes a CA and the client agent's certificate (for
// 127.0.0.1 and client.dc1.consul, as the official chart names client
// agents) under dir, and returns the client agent's configuration serving
// HTTPS on port, its plain HTTP port closed.
func (c *consulTLS) configure(t testing.TB, dir, cfg string, port int) string {
	t.Helper()
	ca := testpki.NewCA(t, "Consul Agent CA")
	crt, key := ca.Leaf(t, "client.dc1.consul", []string{"client.dc1.consul", "localhost"}, []net.IP{net.ParseIP("127.0.0.1")})
	c.CAPEM = ca.PEM
	files := map[string][]byte{"ca.pem": []byte(c.CAPEM), "crt.pem": crt, "key.pem": key}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The HTTPS port where the plain one was, and the plain one closed.
	old := fmt.Sprintf("http = %d, https = -1", port)
	if !strings.Contains(cfg, old) {
		t.Fatalf("the client agent's configuration has no %q:\n%s", old, cfg)
	}
	cfg = strings.Replace(cfg, old, fmt.Sprintf("http = -1, https = %d", port), 1)
	return cfg + fmt.Sprintf(`tls {
  defaults {
    ca_file = %q
    cert_file = %q
    key_file = %q
    verify_incoming = false
  }
}
`, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "crt.pem"), filepath.Join(dir, "key.pem"))
}

// TestProxyOverTLS: given the Consul agent's CA in $CONSUL_CACERT_PEM, as
// the webhook gives it, the proxy talks HTTPS to a Consul agent whose plain
// HTTP API is closed, and serves; with another CA it refuses the agent and
// serves nothing.
func TestProxyOverTLS(t *testing.T) {
	agentTLS := &consulTLS{}
	cl, port := consulAgentsIn(t, nil, "127.0.0.1", consulOpts{tls: agentTLS})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if resp, err := http.Get("http://" + addr + "/v1/agent/self"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("the Consul agent answers plain HTTP on %s", addr)
		}
	}
	regs := register(t, cl, meshPod{name: "web", ip: "127.0.0.1", app: freePort(t), public: freePort(t)})
	args := func(metrics string) []string {
		return []string{"-proxy-id", regs.Proxy.ID, "-http-addr", "https://" + addr, "-tls-server-name", "client.dc1.consul",
			"-metrics-addr", metrics, "-drain", "0s"}
	}

	// One proxy at a time: each reads $CONSUL_CACERT_PEM as it starts.
	t.Setenv(contract.EnvConsulCACertPEM, agentTLS.CAPEM)
	metrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	logs, done, stop := runProxy(t, args(metrics))
	waitServing(t, "the proxy serving over TLS", metrics, logs, done)
	if err := stop(); err != nil {
		t.Fatalf("the proxy stopped with %v", err)
	}

	t.Setenv(contract.EnvConsulCACertPEM, testpki.NewCA(t, "another CA").PEM)
	wrong := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	wrongLogs, wrongDone, _ := runProxy(t, args(wrong))
	eventually(t, 30*time.Second, "the proxy with another CA refusing the agent", func() error {
		if !strings.Contains(wrongLogs.String(), "certificate signed by unknown authority") {
			return fmt.Errorf("logs: %s", wrongLogs.String())
		}
		return nil
	})
	select {
	case err := <-wrongDone:
		t.Fatalf("the proxy with another CA stopped: %v", err)
	default:
	}
	if resp, err := http.Get("http://" + wrong + "/ready"); err == nil {
		resp.Body.Close()
		t.Error("the proxy with another CA serves")
	}
}
