package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/kubeclient"
)

// SelfManagedConfig configures a SelfManaged source.
type SelfManagedConfig struct {
	// ServiceName and ServiceNamespace are the webhook's Service; the leaf
	// has the DNS SANs <svc>, <svc>.<ns>, <svc>.<ns>.svc and
	// <svc>.<ns>.svc.cluster.local.
	ServiceName, ServiceNamespace string
	// WebhookConfigName is the MutatingWebhookConfiguration whose every
	// webhook's clientConfig.caBundle is kept equal to the Secret's ca.crt.
	WebhookConfigName string
	// SecretName is the Secret in ServiceNamespace holding the CA bundle
	// and the serving pair, shared by all replicas.
	SecretName string
	// Validity of the leaf; 0 means 720h. The CA lives 4 times as long.
	Validity time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Resync is how often Run re-reads the Secret and the webhook
	// configuration; 0 means 1m.
	Resync time.Duration
}

// SelfManaged serves a certificate the webhook's replicas issue to
// themselves, with no cert-manager. They share one Secret:
//
//	tls.crt, tls.key  the serving pair (ECDSA P-256), SANs of the Service
//	ca.crt            the caBundle: the CA that signed tls.crt, then, after a
//	                  rotation, the previous CA (whose leaf may still be served)
//
// Whoever finds the Secret missing creates it, and whoever finds its leaf
// in the last third of its life (or broken, or for other names) rotates it
// with a fresh CA; the API server's create and resourceVersion checks pick
// one winner, the others adopt its Secret. Every replica then makes the
// MutatingWebhookConfiguration's caBundle equal ca.crt before it serves
// the Secret's leaf, so the API server can always verify what is served.
//
// RBAC:
//
//	Role in ServiceNamespace:
//	  - apiGroups: [""], resources: [secrets], verbs: [create]
//	    (create cannot be restricted by resourceNames)
//	  - apiGroups: [""], resources: [secrets], verbs: [get, update], resourceNames: [<SecretName>]
//	ClusterRole:
//	  - apiGroups: [admissionregistration.k8s.io], resources: [mutatingwebhookconfigurations],
//	    verbs: [get, patch], resourceNames: [<WebhookConfigName>]
type SelfManaged struct {
	cfg    SelfManagedConfig
	names  []string
	client kubeclient.Interface
	log    *slog.Logger
	m      *metrics

	cert    atomic.Pointer[tls.Certificate]
	missing bool // owned by Run: the configuration was not found last time

	mu       sync.Mutex
	notReady error // why Ready fails; nil when cert and caBundle are in place
}

// maxAttempts bounds the retries of a sync that lost a race to another
// replica; each retry re-reads what the winner wrote, so 2 usually suffice.
const maxAttempts = 5

// errSecretMoved: the Secret changed between reading it and publishing its
// caBundle, so that bundle is stale.
var errSecretMoved = errors.New("the Secret changed while publishing its caBundle")

// NewSelfManaged checks cfg and fills its defaults; it does not contact the
// API server: Run does, and Ready fails until Run's first sync succeeds.
func NewSelfManaged(cfg SelfManagedConfig, client kubeclient.Interface, log *slog.Logger, reg prometheus.Registerer) (*SelfManaged, error) {
	switch {
	case cfg.ServiceName == "" || cfg.ServiceNamespace == "":
		return nil, errors.New("self-managed certificate: ServiceName and ServiceNamespace are required")
	case cfg.WebhookConfigName == "" || cfg.SecretName == "":
		return nil, errors.New("self-managed certificate: WebhookConfigName and SecretName are required")
	case cfg.Validity < 0 || cfg.Resync < 0:
		return nil, fmt.Errorf("self-managed certificate: negative Validity %s or Resync %s", cfg.Validity, cfg.Resync)
	case client == nil:
		return nil, errors.New("self-managed certificate: no Kubernetes client")
	}
	if cfg.Validity == 0 {
		cfg.Validity = 720 * time.Hour
	}
	if cfg.Resync == 0 {
		cfg.Resync = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &SelfManaged{
		cfg:    cfg,
		names:  dnsNames(cfg.ServiceName, cfg.ServiceNamespace),
		client: client,
		log: orDefault(log).With("secret", cfg.ServiceNamespace+"/"+cfg.SecretName,
			"mutatingwebhookconfiguration", cfg.WebhookConfigName),
		m:        m,
		notReady: errors.New("serving certificate not synced with the API server yet"),
	}
	return s, nil
}

// GetCertificate implements tls.Config.GetCertificate.
func (s *SelfManaged) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.cert.Load(); c != nil {
		return c, nil
	}
	return nil, errNoCertificate
}

// Ready is nil once the Secret's leaf is served and every webhook of the
// configuration carries the Secret's caBundle.
func (s *SelfManaged) Ready() error {
	s.mu.Lock()
	err := s.notReady
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if c := s.cert.Load(); s.cfg.Now().After(c.Leaf.NotAfter) {
		return fmt.Errorf("serving certificate expired at %s", c.Leaf.NotAfter.Format(time.RFC3339))
	}
	return nil
}

func (s *SelfManaged) setReady(err error) {
	s.mu.Lock()
	s.notReady = err
	s.mu.Unlock()
}

// Run syncs at once, then every Resync (sooner when the leaf falls due),
// retrying failures with backoff, until ctx ends.
func (s *SelfManaged) Run(ctx context.Context) error {
	const firstBackoff = time.Second
	backoff := firstBackoff
	for {
		next, err := s.sync(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			s.m.failed()
			s.log.Error("syncing the serving certificate", "err", err, "retryIn", backoff)
			next, backoff = backoff, min(2*backoff, s.cfg.Resync)
		} else {
			backoff = firstBackoff
		}
		if next <= 0 { // a leaf due already was just rotated; only a skewed Now gets here
			next = s.cfg.Resync
		}
		t := time.NewTimer(min(next, s.cfg.Resync))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// sync does one round: Secret (create or rotate if needed), then caBundle,
// then the served leaf. It returns how long until the leaf falls due.
func (s *SelfManaged) sync(ctx context.Context) (time.Duration, error) {
	for range maxAttempts {
		// Read once: it owns the Secret, and its caBundle is published.
		mwc, err := s.webhookConfig(ctx)
		if err != nil {
			s.setReady(err)
			return 0, err
		}
		mat, rv, err := s.secret(ctx, ownerRef(mwc))
		if err != nil {
			if s.cert.Load() == nil {
				s.setReady(fmt.Errorf("no serving certificate yet: %w", err))
			}
			return 0, err
		}
		found, err := s.publish(ctx, mwc, mat, rv)
		switch {
		case errors.Is(err, errSecretMoved):
			s.log.Info("the Secret changed while publishing its caBundle; starting over")
			continue
		case err != nil:
			// The configuration holds another bundle, which may not verify
			// the new leaf: keep the leaf served now, if any.
			if s.cert.Load() == nil {
				s.serve(mat)
			}
			s.setReady(err)
			return 0, err
		case !found:
			// Nobody can call a webhook that is not configured, so the
			// leaf is safe to serve; Ready waits for the configuration.
			s.serve(mat)
			s.setReady(fmt.Errorf("MutatingWebhookConfiguration %s not found: caBundle not published", s.cfg.WebhookConfigName))
			if !s.missing { // once, not every Resync
				s.log.Warn("MutatingWebhookConfiguration not found; will publish the caBundle once it exists")
			}
		default:
			s.serve(mat)
			s.setReady(nil)
		}
		s.missing = !found
		return renewAt(mat.leaf()).Sub(s.cfg.Now()), nil
	}
	return 0, fmt.Errorf("the Secret kept changing during %d attempts to publish its caBundle", maxAttempts)
}

// serve swaps in mat's leaf if it is not the one served.
func (s *SelfManaged) serve(mat *material) {
	if cur := s.cert.Load(); cur != nil && cur.Leaf.Equal(mat.leaf()) {
		return
	}
	pair := mat.pair
	s.cert.Store(&pair)
	s.m.served(mat.leaf())
	s.log.Info("serving certificate loaded", "serial", serial(mat),
		"notAfter", mat.leaf().NotAfter.Format(time.RFC3339))
}

func serial(mat *material) string { return mat.leaf().SerialNumber.Text(16) }
