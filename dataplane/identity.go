package dataplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	capi "github.com/hashicorp/consul/api"
)

// Identity is the proxy's leaf certificate and the CA roots it trusts,
// kept current from the Consul agent with blocking queries: a rotated
// leaf or a new root applies to the next handshake, with no restart.
type Identity struct {
	// Service is the name whose leaf certificate the proxy presents, in
	// Consul Enterprise namespace Namespace ("": none, Consul without
	// namespaces).
	Service, Namespace string
	Agent              *capi.Agent
	Log                *slog.Logger
	// Loaded, when set, is told of each leaf certificate and root list
	// loaded (for the metrics).
	Loaded func(what string, leaf *x509.Certificate)

	state     atomic.Pointer[identityState]
	leafMu    sync.Mutex
	leaf      *tls.Certificate
	roots     *trust
	ready     chan struct{}
	readyOnce sync.Once
}

type identityState struct {
	leaf  *tls.Certificate
	trust *trust
}

// trust is a set of CA roots: the pool to verify peers against and the
// trust domain their identities must be in. Intermediates come with the
// peer's chain (Consul appends them to a leaf's PEM).
type trust struct {
	domain string
	roots  *x509.CertPool
}

// NewIdentity is an Identity for service; Run loads it.
func NewIdentity(consul *capi.Agent, service string, log *slog.Logger) *Identity {
	return &Identity{Service: service, Agent: consul, Log: log, ready: make(chan struct{})}
}

// Ready is closed once the leaf certificate and the roots are loaded.
func (id *Identity) Ready() <-chan struct{} { return id.ready }

// Run watches the leaf certificate and the roots until ctx ends.
func (id *Identity) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); id.watch(ctx, "CA roots", id.loadRoots) }()
	go func() { defer wg.Done(); id.watch(ctx, "leaf certificate", id.loadLeaf) }()
	wg.Wait()
}

// watch runs one blocking query after another; an error is retried with
// a back-off up to 30 s, keeping what was loaded.
func (id *Identity) watch(ctx context.Context, what string, load func(*capi.QueryOptions) (uint64, error)) {
	var index uint64
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		next, err := load((&capi.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			id.Log.Error("watch "+what, "service", id.Service, "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if next < index {
			next = 0 // the index went backwards (the Consul agent restarted): start over
		}
		index = next
	}
}

func (id *Identity) loadLeaf(q *capi.QueryOptions) (uint64, error) {
	q.Namespace = id.Namespace
	leaf, meta, err := id.Agent.ConnectCALeaf(id.Service, q)
	if err != nil {
		return 0, fmt.Errorf("leaf certificate for %s: %w", id.Service, err)
	}
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		return 0, fmt.Errorf("leaf certificate for %s (serial %s): %w", id.Service, leaf.SerialNumber, err)
	}
	id.leafMu.Lock()
	id.leaf = &cert
	id.publish()
	id.leafMu.Unlock()
	id.Log.Debug("leaf certificate loaded", "service", id.Service, "serial", leaf.SerialNumber, "valid_before", leaf.ValidBefore)
	if id.Loaded != nil {
		id.Loaded("leaf", cert.Leaf)
	}
	return meta.LastIndex, nil
}

func (id *Identity) loadRoots(q *capi.QueryOptions) (uint64, error) {
	list, meta, err := id.Agent.ConnectCARoots(q)
	if err != nil {
		return 0, fmt.Errorf("CA roots: %w", err)
	}
	t, err := newTrust(list)
	if err != nil {
		return 0, err
	}
	id.leafMu.Lock()
	id.roots = t
	id.publish()
	id.leafMu.Unlock()
	id.Log.Debug("CA roots loaded", "trust_domain", t.domain, "roots", len(list.Roots))
	if id.Loaded != nil {
		id.Loaded("roots", nil)
	}
	return meta.LastIndex, nil
}

// publish swaps in the current pair; called with leafMu held.
func (id *Identity) publish() {
	if id.leaf == nil || id.roots == nil {
		return
	}
	id.state.Store(&identityState{leaf: id.leaf, trust: id.roots})
	id.readyOnce.Do(func() { close(id.ready) })
}

// newTrust trusts every root of the list, active or not: during a CA
// rotation peers still present leaves of the old one.
func newTrust(list *capi.CARootList) (*trust, error) {
	t := &trust{domain: list.TrustDomain, roots: x509.NewCertPool()}
	if t.domain == "" {
		return nil, errors.New("CA roots: no trust domain (is Connect enabled on the Consul servers?)")
	}
	n := 0
	for _, r := range list.Roots {
		if t.roots.AppendCertsFromPEM([]byte(r.RootCertPEM)) {
			n++
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("CA roots of trust domain %s: no usable root certificate", t.domain)
	}
	return t, nil
}

func (id *Identity) current() (*identityState, error) {
	s := id.state.Load()
	if s == nil {
		return nil, errors.New("no leaf certificate or CA roots yet")
	}
	return s, nil
}

// ServerConfig is the public listener's TLS: a client certificate from
// the Consul CA is required; which service may call is decided after the
// handshake (Authorize).
func (id *Identity) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			s, err := id.current()
			if err != nil {
				return nil, err
			}
			return s.leaf, nil
		},
		// The chain is checked here, against the roots of the moment; Go's
		// own check would need ClientCAs fixed in the config.
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := id.verify(raw)
			return err
		},
	}
}

// ClientConfig is the TLS to an upstream's sidecar: the proxy's leaf, and
// the peer's chain checked against the roots with its identity required
// to be want's service.
func (id *Identity) ClientConfig(want ServiceID) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: want.SNI(),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			s, err := id.current()
			if err != nil {
				return nil, err
			}
			return s.leaf, nil
		},
		// Consul's leaves name the service in a URI SAN, not the SNI as a
		// DNS name: the standard hostname check cannot apply, so the whole
		// verification is done here, chain and identity.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			got, err := id.verify(raw)
			if err != nil {
				return err
			}
			if !want.Same(got) {
				return fmt.Errorf("upstream presented %s, want service %s", got.URI(), want.Service)
			}
			return nil
		},
	}
}

// verify checks a peer's chain against the current roots and returns the
// service identity of its leaf.
func (id *Identity) verify(raw [][]byte) (ServiceID, error) {
	s, err := id.current()
	if err != nil {
		return ServiceID{}, err
	}
	if len(raw) == 0 {
		return ServiceID{}, errors.New("peer sent no certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, b := range raw {
		if certs[i], err = x509.ParseCertificate(b); err != nil {
			return ServiceID{}, fmt.Errorf("peer certificate: %w", err)
		}
	}
	inters := x509.NewCertPool()
	for _, c := range certs[1:] {
		inters.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: s.trust.roots, Intermediates: inters,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return ServiceID{}, fmt.Errorf("peer certificate %s: %w", serial(certs[0].SerialNumber), err)
	}
	if len(certs[0].URIs) != 1 {
		return ServiceID{}, fmt.Errorf("peer certificate %s: %d URI SANs, want one SPIFFE ID", serial(certs[0].SerialNumber), len(certs[0].URIs))
	}
	peer, err := ParseServiceID(certs[0].URIs[0])
	if err != nil {
		return ServiceID{}, err
	}
	if !strings.EqualFold(peer.TrustDomain, s.trust.domain) {
		return ServiceID{}, fmt.Errorf("peer %s: trust domain is not %s", peer.URI(), s.trust.domain)
	}
	return peer, nil
}

// TrustDomain is the current roots' trust domain, "" before they load.
func (id *Identity) TrustDomain() string {
	if s := id.state.Load(); s != nil {
		return s.trust.domain
	}
	return ""
}

// peerOf is the caller's identity and certificate serial, from a
// completed server-side handshake.
func peerOf(cs tls.ConnectionState) (*url.URL, string, error) {
	if len(cs.PeerCertificates) == 0 || len(cs.PeerCertificates[0].URIs) != 1 {
		return nil, "", errors.New("caller's certificate has no SPIFFE ID")
	}
	c := cs.PeerCertificates[0]
	return c.URIs[0], serial(c.SerialNumber), nil
}

// serial is a certificate serial number as Consul writes it: hex bytes
// separated by colons.
func serial(n *big.Int) string {
	b := n.Bytes()
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02x", x)
	}
	return strings.Join(parts, ":")
}
