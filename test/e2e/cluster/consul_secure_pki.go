package cluster

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	capi "github.com/hashicorp/consul/api"
)

// The TLS names Consul checks: with verify_server_hostname an agent only
// talks RPC to a certificate for server.<dc>.<domain>.
func (s SecureConsul) serverName() string { return "server." + s.Datacenter + ".consul" }
func (s SecureConsul) clientName() string { return "client." + s.Datacenter + ".consul" }

// writeConsulPKI makes the pair's CA and the server's certificate and,
// without auto-encrypt, the client agent's, each for its TLS name,
// localhost and the agent's addresses (as `consul tls cert create` would).
func (s SecureConsul) writeConsulPKI(f secureConsulFiles) error {
	dir := f.tlsDir()
	ca, err := newCA(dir, "ca", "meshlet Consul CA")
	if err != nil {
		return fmt.Errorf("consul CA: %w", err)
	}
	issue := func(file, name string, a ConsulAgent) error {
		spec := certSpec{file: file, cn: name, server: true, dns: []string{name, "localhost"}, ips: agentIPs(a)}
		if err := ca.issue(dir, spec); err != nil {
			return fmt.Errorf("consul %s certificate: %w", file, err)
		}
		return nil
	}
	if err := issue("server", s.serverName(), s.Server); err != nil {
		return err
	}
	if s.AutoEncrypt {
		return nil
	}
	return issue("client", s.clientName(), s.Client)
}

// WritePKI writes into dir/tls the pair's CA (ca.crt, ca.key), the
// server's certificate (server.crt, server.key) and, without auto-encrypt,
// the client agent's (client.crt, client.key).
func (s SecureConsul) WritePKI(dir string) error {
	f := secureConsulFiles{dir}
	if err := os.MkdirAll(f.tlsDir(), 0o700); err != nil {
		return err
	}
	return s.writeConsulPKI(f)
}

// agentIPs are the agent's addresses and loopback, each once.
func agentIPs(a ConsulAgent) []net.IP {
	var out []net.IP
	seen := map[string]bool{}
	for _, s := range append([]string{a.BindIP, "127.0.0.1"}, a.ClientAddrs...) {
		if ip := net.ParseIP(s); ip != nil && !seen[ip.String()] {
			seen[ip.String()] = true
			out = append(out, ip)
		}
	}
	return out
}

// writeConsulCABundle writes the harness's CA and the Connect CA's roots.
// An auto-encrypt client agent's certificate (HTTPS and gRPC TLS) is signed
// by the Connect CA, not the harness's: AutoEncrypt.Sign is the Connect
// CA's leaf signing, and with the built-in provider its active root signs
// directly (TestSecureConsul checks that the harness's CA alone does not
// trust it). The bundle is a copy: a rotated Connect CA root needs it
// written again.
func (c *Cluster) writeConsulCABundle(ctx context.Context, srv *capi.Client, f secureConsulFiles) error {
	var roots []string
	err := c.waitFor(ctx, "consul-connect-ca", func(ctx context.Context) error {
		list, _, err := srv.Connect().CARoots((&capi.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return err
		}
		roots = roots[:0]
		for _, r := range list.Roots {
			roots = append(roots, strings.TrimSpace(r.RootCertPEM)+"\n")
		}
		if list.ActiveRootID == "" || len(roots) == 0 {
			return errors.New("no Connect CA root yet")
		}
		return nil
	})
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(f.caCert())
	if err != nil {
		return err
	}
	bundle := string(ca) + strings.Join(roots, "")
	if err := os.WriteFile(f.caBundle(), []byte(bundle), 0o644); err != nil {
		return fmt.Errorf("write the Consul CA bundle: %w", err)
	}
	return nil
}

// NewToken is a random token secret for Consul: a version 4 UUID, the
// form Consul's own take.
func NewToken() (string, error) { return newUUID() }

// newUUID is a random (version 4) UUID, the form Consul's token secrets take.
func newUUID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random token: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}
