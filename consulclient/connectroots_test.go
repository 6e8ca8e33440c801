package consulclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/test/consultest"
	"github.com/meshlet/meshlet/test/repobin"
	"github.com/meshlet/meshlet/test/testpki"
)

func freePort(t *testing.T) int { return consultest.FreePort(t) }

// tlsConsulServer runs a Consul server with Connect on, serving HTTPS only
// with a certificate of chart (for server.dc1.consul and 127.0.0.1), as
// the official chart's servers do. It returns the HTTPS address.
func tlsConsulServer(t *testing.T, chart *testpki.CA) string {
	t.Helper()
	bin := repobin.Need(t, "consul", "make tools")
	dir := t.TempDir()
	crt, key := chart.Leaf(t, "server.dc1.consul", []string{"server.dc1.consul"}, []net.IP{net.ParseIP("127.0.0.1")})
	for name, b := range map[string][]byte{"ca.pem": []byte(chart.PEM), "crt.pem": crt, "key.pem": key} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	https := freePort(t)
	cfg := fmt.Sprintf(`datacenter = "dc1"
node_name = "server"
server = true
bootstrap_expect = 1
data_dir = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
ports { http = -1, https = %d, grpc = -1, grpc_tls = -1, dns = -1, serf_lan = %d, serf_wan = -1, server = %d }
connect { enabled = true }
performance { raft_multiplier = 1 }
disable_update_check = true
tls {
  defaults {
    ca_file = %q
    cert_file = %q
    key_file = %q
    verify_incoming = false
  }
}
`, filepath.Join(dir, "data"), https, freePort(t), freePort(t),
		filepath.Join(dir, "ca.pem"), filepath.Join(dir, "crt.pem"), filepath.Join(dir, "key.pem"))
	path := filepath.Join(dir, "server.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "agent", "-config-file="+path)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_, _ = cmd.Process.Wait()
	})
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(https))
}

// setConnectRoot makes root the Connect CA's root (Consul's built-in
// provider with a key the test holds, so that the test can sign what an
// auto-encrypt client agent would present).
func setConnectRoot(t *testing.T, cl *capi.Client, root *testpki.CA) {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(root.Key)
	if err != nil {
		t.Fatal(err)
	}
	key := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err = cl.Connect().CASetConfig(&capi.CAConfig{Provider: "consul",
			Config: map[string]any{"PrivateKey": key, "RootCert": root.PEM}}, nil)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("set the Connect CA's root: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// agentSignedBy serves HTTPS with a certificate root signs for
// client.dc1.consul and 127.0.0.1: a client agent's auto-encrypt one.
func agentSignedBy(t *testing.T, root *testpki.CA) string {
	t.Helper()
	crt, key := root.Leaf(t, "client.dc1.consul", []string{"client.dc1.consul", "localhost"}, []net.IP{net.ParseIP("127.0.0.1")})
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "agent") }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestConnectRoots: from Consul servers verified with the chart's CA, the
// Connect CA's roots are fetched and trusted besides that CA; a client
// made once trusts a root fetched later (a rotation) on its next
// connection; servers the chart's CA does not verify are refused.
func TestConnectRoots(t *testing.T) {
	chart := testpki.NewCA(t, "Consul Agent CA")
	addr := tlsConsulServer(t, chart)
	mgmt, err := capi.NewClient(&capi.Config{Address: addr, Scheme: "https", TLSConfig: capi.TLSConfig{CAPem: []byte(chart.PEM), Address: "server.dc1.consul"}})
	if err != nil {
		t.Fatal(err)
	}
	root1 := testpki.NewCA(t, "Connect root 1")
	setConnectRoot(t, mgmt, root1)
	agent1 := agentSignedBy(t, root1)

	roots, err := NewConnectRoots(ServerFlags{Addr: addr, ServerName: "server.dc1.consul"}, []byte(chart.PEM))
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: roots.Transport(""), Timeout: 5 * time.Second}
	get := func(url string) error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		client.CloseIdleConnections()
		return nil
	}
	if err := get(agent1); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("before the roots are fetched: %v, want an unknown authority", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := roots.Wait(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	if err := get(agent1); err != nil {
		t.Fatalf("an agent the Connect root signed, once the roots are fetched: %v", err)
	}
	for _, want := range []string{chart.PEM, root1.PEM} {
		if !strings.Contains(roots.BundlePEM(), want) {
			t.Errorf("the bundle lacks\n%s", want)
		}
	}
	if changed, err := roots.Refresh(ctx); err != nil || changed {
		t.Errorf("a second fetch with nothing rotated: changed %v, %v", changed, err)
	}

	// A rotation: the new root is trusted by the same client.
	root2 := testpki.NewCA(t, "Connect root 2")
	setConnectRoot(t, mgmt, root2)
	agent2 := agentSignedBy(t, root2)
	if changed, err := roots.Refresh(ctx); err != nil || !changed {
		t.Fatalf("after a rotation: changed %v, %v; want the new root", changed, err)
	}
	if err := get(agent2); err != nil {
		t.Errorf("an agent the new root signed: %v", err)
	}
	// The name is checked: the agent's certificate is not for another.
	other := &http.Client{Transport: roots.Transport("server.dc2.consul"), Timeout: 5 * time.Second}
	if resp, err := other.Get(agent2); err == nil {
		resp.Body.Close()
		t.Error("an agent certificate for client.dc1.consul was accepted as server.dc2.consul")
	}

	// Servers the chart's CA does not verify give no roots.
	stranger, err := NewConnectRoots(ServerFlags{Addr: addr, ServerName: "server.dc1.consul"}, []byte(testpki.NewCA(t, "Another CA").PEM))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.Refresh(ctx); err == nil || !strings.Contains(err.Error(), addr) {
		t.Errorf("roots from servers the CA does not verify: %v, want a refusal naming them", err)
	}
}

// TestServerFlags: the address is host:port, https:// allowed.
func TestServerFlags(t *testing.T) {
	for addr, ok := range map[string]bool{"": true, "consul-server.consul.svc:8501": true, "https://10.0.0.1:8501": true,
		"consul-server": false, "http://x:1": false, "https://x": false} {
		if err := (ServerFlags{Addr: addr}).Validate(); (err == nil) != ok {
			t.Errorf("-consul-server-addr %q: %v, want valid %v", addr, err, ok)
		}
	}
}
