package consulclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	capi "github.com/hashicorp/consul/api"
)

// A client agent whose certificate comes by auto-encrypt (the official
// chart's global.tls.enableAutoEncrypt) presents one signed by Consul's
// Connect CA, not by the CA the chart was given: whoever talks TLS to it
// must trust the Connect CA's roots too, and they change when the Connect
// CA rotates. The Consul servers' certificates are the chart CA's, so the
// roots can be fetched from them over a connection that CA verifies:
// ConnectRoots does, and keeps the bundle (chart CA + roots) current.

// ServerFlags say where the Consul servers' HTTPS API is, for the Connect
// CA's roots.
type ServerFlags struct {
	Addr, ServerName string
}

// Register adds -consul-server-addr and -consul-server-tls-server-name.
func (f *ServerFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Addr, "consul-server-addr", "", "the Consul servers' HTTPS API, host:port: with auto-encrypt client agents, the Connect CA's roots are fetched there, verified with the CA given, and trusted besides it; empty: the CA given must hold them")
	fs.StringVar(&f.ServerName, "consul-server-tls-server-name", "", "name checked in the Consul servers' certificate; empty: the host of -consul-server-addr")
}

// Validate checks the address.
func (f ServerFlags) Validate() error {
	if f.Addr == "" {
		return nil
	}
	addr := strings.TrimPrefix(f.Addr, "https://")
	if _, _, err := net.SplitHostPort(addr); err != nil || strings.Contains(addr, "://") {
		return fmt.Errorf("-consul-server-addr %q: expected host:port (or https://host:port) of the Consul servers' HTTPS API", f.Addr)
	}
	return nil
}

// ConnectRoots is the CA bundle a client agent's certificate is verified
// with: the chart CA and the Connect CA's roots, fetched from the servers.
type ConnectRoots struct {
	servers *capi.Client
	chartCA []*x509.Certificate
	addr    string
	state   atomic.Pointer[rootsState]
}

type rootsState struct {
	pool *x509.CertPool
	pem  string
	ids  string // the roots' IDs, to log a change
}

// NewConnectRoots reaches the servers at f.Addr, verified with chartCAPEM.
// It holds the chart CA alone until the first Refresh.
func NewConnectRoots(f ServerFlags, chartCAPEM []byte) (*ConnectRoots, error) {
	chart, err := parseCerts(chartCAPEM)
	if err != nil || len(chart) == 0 {
		return nil, fmt.Errorf("the CA given for the Consul servers holds no certificate (%v)", err)
	}
	cc := capi.DefaultConfig()
	cc.Scheme, cc.Address = "https", strings.TrimPrefix(f.Addr, "https://")
	cc.TLSConfig.CAPem = chartCAPEM
	cc.TLSConfig.Address = f.ServerName
	cc.Token, cc.TokenFile = "", "" // the roots are public
	hc, err := capi.NewHttpClient(cc.Transport, cc.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("consul client for the servers at %s: %w", f.Addr, err)
	}
	hc.Timeout = 10 * time.Second
	cc.HttpClient = hc
	servers, err := capi.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("consul client for the servers at %s: %w", f.Addr, err)
	}
	r := &ConnectRoots{servers: servers, chartCA: chart, addr: f.Addr}
	r.state.Store(r.build(nil, ""))
	return r, nil
}

func (r *ConnectRoots) build(roots []*x509.Certificate, ids string) *rootsState {
	s := &rootsState{pool: x509.NewCertPool(), ids: ids}
	var b strings.Builder
	seen := map[string]bool{}
	for _, c := range append(append([]*x509.Certificate{}, r.chartCA...), roots...) {
		if seen[string(c.Raw)] {
			continue
		}
		seen[string(c.Raw)] = true
		s.pool.AddCert(c)
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	s.pem = b.String()
	return s
}

// Refresh fetches the roots once; it returns whether they changed.
func (r *ConnectRoots) Refresh(ctx context.Context) (bool, error) {
	list, _, err := r.servers.Connect().CARoots((&capi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("the Connect CA's roots from the Consul servers at %s: %w", r.addr, err)
	}
	var roots []*x509.Certificate
	var ids []string
	for _, root := range list.Roots {
		certs, err := parseCerts([]byte(root.RootCertPEM))
		if err != nil || len(certs) == 0 {
			return false, fmt.Errorf("the Connect CA's root %s from the Consul servers at %s: no certificate (%v)", root.ID, r.addr, err)
		}
		roots = append(roots, certs...)
		ids = append(ids, root.ID)
	}
	if len(roots) == 0 {
		return false, fmt.Errorf("the Consul servers at %s have no Connect CA root yet (is Connect enabled?)", r.addr)
	}
	joined := strings.Join(ids, ",")
	if r.state.Load().ids == joined {
		return false, nil
	}
	r.state.Store(r.build(roots, joined))
	return true, nil
}

// Wait refreshes until the first success or ctx's end, logging failures.
func (r *ConnectRoots) Wait(ctx context.Context, log *slog.Logger) error {
	wait := 500 * time.Millisecond
	for {
		_, err := r.Refresh(ctx)
		if err == nil {
			log.Info("trusting the Connect CA's roots for the Consul client agents' certificates", "servers", r.addr, "roots", r.state.Load().ids)
			return nil
		}
		log.Warn("cannot fetch the Connect CA's roots yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// Run refreshes every interval until ctx ends: after a rotation of the
// Connect CA, new connections trust the new root.
func (r *ConnectRoots) Run(ctx context.Context, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := r.Refresh(ctx)
		switch {
		case err != nil:
			log.Warn("refreshing the Connect CA's roots failed; keeping the ones held", "err", err)
		case changed:
			log.Info("the Connect CA's roots changed", "roots", r.state.Load().ids)
		}
	}
}

// BundlePEM is the chart CA and the roots, in PEM.
func (r *ConnectRoots) BundlePEM() string { return r.state.Load().pem }

// TLSConfig verifies a client agent's certificate against the bundle as
// it is at each handshake (so a refreshed root counts without a new
// client), and its name: serverName, else the host dialled.
func (r *ConnectRoots) TLSConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Go's own verification takes a fixed pool: VerifyConnection does
		// it with the current one instead.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		ServerName:         serverName,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the Consul agent presented no certificate")
			}
			name := serverName
			if name == "" {
				name = cs.ServerName
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: r.state.Load().pool, Intermediates: inter, DNSName: name})
			return err
		},
	}
}

// Transport is an HTTP transport to the client agent verified with
// TLSConfig; dialled host names reach VerifyConnection as ServerName.
func (r *ConnectRoots) Transport(serverName string) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = r.TLSConfig(serverName)
	return t
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// RootsRefresh is how often the Connect CA's roots are fetched again.
const RootsRefresh = 5 * time.Minute

// UseConnectRoots makes f's clients trust the Connect CA's roots from the
// servers sf names besides f's CA, which also verifies the servers. It
// does not wait: the roots are fetched in the background, retried until
// they come and then refreshed until ctx ends; until the first fetch, a
// client agent whose certificate the Connect CA signed is refused, and
// the caller's Consul calls fail and are retried as any other failure
// (the node agent's other work, its CNI install first, goes on). Nothing
// to do when sf names no server.
func (f *Flags) UseConnectRoots(ctx context.Context, sf ServerFlags, log *slog.Logger) error {
	if sf.Addr == "" {
		return nil
	}
	ca := []byte(f.CAPEM)
	if f.CAFile != "" {
		b, err := os.ReadFile(f.CAFile)
		if err != nil {
			return fmt.Errorf("-ca-file: %w", err)
		}
		ca = b
	}
	if len(ca) == 0 {
		return fmt.Errorf("-consul-server-addr %s needs the CA that signs the Consul servers' certificates (-ca-file)", sf.Addr)
	}
	r, err := NewConnectRoots(sf, ca)
	if err != nil {
		return err
	}
	go func() {
		if r.Wait(ctx, log) == nil {
			r.Run(ctx, RootsRefresh, log)
		}
	}()
	f.Roots = r
	return nil
}
