package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"

	"github.com/meshlet/meshlet/test/repobin"
)

// TestSecureConsul boots the secure Consul pair on loopback, once with an
// auto-encrypt client agent and once with a certificate the harness signs
// for it, and checks what the chart's secure install promises: TLS only,
// default deny, an agent token with the client's node identity.
func TestSecureConsul(t *testing.T) {
	consul := repobin.Need(t, "consul", "make tools")
	for _, tc := range []struct {
		name        string
		autoEncrypt bool
		base        int
	}{{"auto-encrypt", true, 27100}, {"client-cert", false, 27200}} {
		t.Run(tc.name, func(t *testing.T) {
			s := testSecureConsul(tc.base, tc.autoEncrypt)
			if err := checkPortsFree(append(s.hostPorts(), s.plainPorts()...)); err != nil {
				t.Fatal(err)
			}
			// Root is where bin/consul is, so c.bin finds it.
			c := &Cluster{Root: filepath.Dir(filepath.Dir(consul)), Dir: t.TempDir(),
				Log: slog.New(slog.NewTextHandler(t.Output(), nil))}
			t.Cleanup(func() { stopSecureConsul(t, c, s) })
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			tok, err := c.startSecureConsul(ctx, s)
			if err != nil {
				t.Fatal(err)
			}
			f := secureConsulFiles{c.path("consul")}
			checkSecureFiles(t, f, tok)
			checkHeldPorts(t, c, s.hostPorts(), "the secure pair's ports")
			for _, p := range s.plainPorts() {
				conn, err := net.DialTimeout("tcp", net.JoinHostPort(p.addr, strconv.Itoa(p.port)), 2*time.Second)
				if err == nil {
					conn.Close()
				}
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Errorf("%s port %d: want connection refused, got %v", p.component, p.port, err)
				}
			}
			checkSecureTLS(t, ctx, s, f)
			checkSecureACLs(t, ctx, s, f, tok)
		})
	}
}

// stopSecureConsul stops the pair by its recorded PIDs and checks that
// nothing of it runs or listens any more.
func stopSecureConsul(t *testing.T, c *Cluster, s SecureConsul) {
	if t.Failed() {
		for _, n := range []string{"consul-server", "consul-client"} {
			if b, err := os.ReadFile(filepath.Join(c.Dir, "logs", n+".log")); err == nil {
				t.Logf("%s log:\n%s", n, tail(string(b), 40))
			}
		}
	}
	for _, n := range []string{"consul-client", "consul-server"} {
		if err := c.stop(n, 15*time.Second); err != nil {
			t.Error(err)
		}
	}
	if left := c.recordedAlive(); len(left) > 0 {
		t.Errorf("still running after stop: %v", left)
	}
	if err := checkPortsFree(s.hostPorts()); err != nil {
		t.Errorf("after stop: %v", err)
	}
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// checkSecureFiles: the secrets are root's alone, and the client agent
// runs with the token the harness made for it.
func checkSecureFiles(t *testing.T, f secureConsulFiles, tok *capi.ACLToken) {
	for _, p := range []string{f.managementToken(), f.serverHCL(), f.clientHCL()} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: want mode 0600, got %v (%v)", p, fi.Mode().Perm(), err)
		}
	}
	hcl, err := os.ReadFile(f.clientHCL())
	if err != nil || !strings.Contains(string(hcl), "agent = "+strconv.Quote(tok.SecretID)) {
		t.Errorf("client.hcl does not carry the agent token %s (%v)", tok.AccessorID, err)
	}
}

// pemPool is a pool of the certificates in the PEM files or strings given.
func pemPool(t *testing.T, pems ...string) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	for _, p := range pems {
		if b, err := os.ReadFile(p); err == nil {
			p = string(b)
		}
		if !pool.AppendCertsFromPEM([]byte(p)) {
			t.Fatalf("no certificate in %.60q", p)
		}
	}
	return pool
}

func tlsDial(addr, serverName string, pool *x509.CertPool) (tls.ConnectionState, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second},
		Config: &tls.Config{RootCAs: pool, ServerName: serverName}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState(), nil
}

// checkSecureTLS: the client agent's HTTPS is trusted with the bundle, by
// name and by address; which CA alone trusts it shows who signed it. Both
// gRPC TLS ports take an HTTP/2 connection with the bundle.
func checkSecureTLS(t *testing.T, ctx context.Context, s SecureConsul, f secureConsulFiles) {
	srv, err := secureConsulAPI(s.Server, s.serverName(), f.caCert(), "")
	if err != nil {
		t.Fatal(err)
	}
	roots, _, err := srv.Connect().CARoots((&capi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	var connectPEMs []string
	for _, r := range roots.Roots {
		connectPEMs = append(connectPEMs, r.RootCertPEM)
	}
	bundle, harness, connect := pemPool(t, f.caBundle()), pemPool(t, f.caCert()), pemPool(t, connectPEMs...)
	https := net.JoinHostPort(s.Client.ClientAddrs[0], strconv.Itoa(s.Client.HTTPS))
	for _, name := range []string{"localhost", ""} {
		st, err := tlsDial(https, name, bundle)
		if err != nil {
			t.Fatalf("client agent HTTPS with the bundle, server name %q: %v", name, err)
		}
		if name == "" {
			leaf, chain := st.PeerCertificates[0], st.VerifiedChains[0]
			t.Logf("client agent HTTPS certificate: DNS %v, IP %v, URI %v, issuer %q, chain of %d up to %q",
				leaf.DNSNames, leaf.IPAddresses, leaf.URIs, leaf.Issuer.CommonName, len(chain), chain[len(chain)-1].Subject.CommonName)
		}
	}
	_, errHarness := tlsDial(https, "localhost", harness)
	_, errConnect := tlsDial(https, "localhost", connect)
	var unknown x509.UnknownAuthorityError
	if s.AutoEncrypt {
		if !errors.As(errHarness, &unknown) {
			t.Errorf("auto-encrypt client agent trusted with the harness CA alone: want unknown authority, got %v", errHarness)
		}
		if errConnect != nil {
			t.Errorf("auto-encrypt client agent with the Connect CA roots alone: %v", errConnect)
		}
	} else {
		if errHarness != nil {
			t.Errorf("client agent with the harness CA alone: %v", errHarness)
		}
		if !errors.As(errConnect, &unknown) {
			t.Errorf("client agent trusted with the Connect CA alone: want unknown authority, got %v", errConnect)
		}
	}
	for _, a := range []struct {
		agent ConsulAgent
		name  string
	}{{s.Server, s.serverName()}, {s.Client, "localhost"}} {
		addr := net.JoinHostPort(a.agent.ClientAddrs[0], strconv.Itoa(a.agent.GRPCTLS))
		if err := grpcReady(ctx, addr, &tls.Config{RootCAs: bundle, ServerName: a.name}); err != nil {
			t.Errorf("%s gRPC TLS %s: %v", a.agent.Node, addr, err)
		}
	}
}

// grpcReady connects a gRPC client over TLS: Ready means the handshake
// and HTTP/2's exchange of settings went through.
func grpcReady(ctx context.Context, addr string, cfg *tls.Config) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn.Connect()
	for st := conn.GetState(); st != connectivity.Ready; st = conn.GetState() {
		if !conn.WaitForStateChange(ctx, st) {
			return errors.New("not ready, last state " + st.String())
		}
	}
	return nil
}
