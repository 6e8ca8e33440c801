// Package certs supplies the HTTPS serving certificate of the mutating
// admission webhook (`meshlet webhook`). Two sources:
//
//   - Files: a certificate and key on disk, written by cert-manager or any
//     other issuer (usually a mounted Secret), reloaded when they change.
//   - SelfManaged: no issuer needed. The replicas share one Secret holding a
//     CA and a serving pair, create and rotate it themselves, and keep the
//     MutatingWebhookConfiguration's caBundle current.
//
// Either plugs into the server the same way:
//
//	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: src.GetCertificate}
//	go src.Run(ctx)
//	/readyz → src.Ready()
package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// Source is a serving certificate that stays current while Run runs.
type Source interface {
	// GetCertificate is tls.Config.GetCertificate: the current pair, safe
	// for concurrent handshakes while Run swaps it.
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Run keeps the certificate current until ctx ends, then returns nil.
	Run(ctx context.Context) error
	// Ready is nil once a valid certificate is served (and, self-managed,
	// the API server has the CA to verify it).
	Ready() error
}

var (
	_ Source = (*Files)(nil)
	_ Source = (*SelfManaged)(nil)
)

// errNoCertificate is what a handshake gets before the first certificate.
var errNoCertificate = errors.New("no serving certificate loaded yet")

// metrics are the two series both sources export. Unregistered (nil
// Registerer) they still work; nobody scrapes them.
type metrics struct {
	expiry  prometheus.Gauge
	reloads *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshlet_webhook_certificate_expiry_timestamp_seconds",
			Help: "NotAfter of the webhook's serving certificate, in unix seconds.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_webhook_certificate_reloads_total",
			Help: "Serving certificate loads, reloads and rotations, by result (ok, error).",
		}, []string{"result"}),
	}
	// Both results exist from the start, so rate() and alerts see a 0.
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("error")
	if reg == nil {
		return m, nil
	}
	var err error
	if m.expiry, err = register(reg, m.expiry); err != nil {
		return nil, err
	}
	if m.reloads, err = register(reg, m.reloads); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// its name: two sources in one process (tests, a restarted server) then
// share the series instead of failing.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("register certificate metrics: %w", err)
}

// served records that leaf is now the serving certificate.
func (m *metrics) served(leaf *x509.Certificate) {
	m.expiry.Set(float64(leaf.NotAfter.Unix()))
	m.reloads.WithLabelValues("ok").Inc()
}

func (m *metrics) failed() { m.reloads.WithLabelValues("error").Inc() }

func orDefault(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.Default()
	}
	return log
}
