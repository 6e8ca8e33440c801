package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshlet/meshlet/webhook/certs"
)

// CertSource supplies the serving certificate: webhook/certs' Files or
// SelfManaged.
type CertSource = certs.Source

// Server is the HTTPS server: /mutate, /healthz, /readyz, /metrics.
type Server struct {
	Handler  *Handler
	Certs    CertSource
	Registry *prometheus.Registry
	Log      *slog.Logger
	// ShutdownDelay keeps serving, unready, after the stop signal, so the
	// API server stops picking this replica before its port closes.
	ShutdownDelay time.Duration
	// ShutdownGrace bounds the wait for reviews in flight.
	ShutdownGrace time.Duration

	stopping atomic.Bool
}

// Paths the server answers.
const (
	PathMutate  = "/mutate"
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
	PathMetrics = "/metrics"
)

// Mux is the server's routes, without TLS (tests and benchmarks use it).
func (s *Server) Mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle(PathMutate, s.Handler)
	mux.HandleFunc(PathHealthz, func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc(PathReadyz, func(w http.ResponseWriter, _ *http.Request) {
		if err := s.ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	if s.Registry != nil {
		mux.Handle(PathMetrics, promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{Registry: s.Registry}))
	}
	return mux
}

// closeWhileStopping answers with "Connection: close" from the stop
// signal on. The API server keeps HTTP/1.1 connections to a replica it
// reached through the Service's ClusterIP; closed by the client after a
// response, a connection cannot be closed by this server's drain while
// the API server writes the next review on it (it would see a broken
// pipe, and admission fails). HTTP/2 has GOAWAY for that.
func (s *Server) closeWhileStopping(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.stopping.Load() && r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) ready() error {
	if s.stopping.Load() {
		return errors.New("shutting down")
	}
	return s.Certs.Ready()
}

// TLSConfig is TLS 1.2 or newer with the source's certificate.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.Certs.GetCertificate, NextProtos: []string{"h2", "http/1.1"}}
}

// Serve serves on ln until ctx ends, then drains.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.closeWhileStopping(s.Mux()),
		TLSConfig:         s.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.Log.Handler(), slog.LevelDebug),
	}
	certCtx, stopCerts := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCerts()
	certDone := make(chan error, 1)
	go func() { certDone <- s.Certs.Run(certCtx) }()
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	s.Log.Info("webhook serving", "addr", ln.Addr().String(), "data_plane", s.Handler.Config.DataPlane, "native_sidecar", s.Handler.Config.NativeSidecar,
		"fast_start", s.Handler.Config.FastStart)
	select {
	case err := <-served:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case err := <-certDone:
		_ = srv.Close()
		return fmt.Errorf("serving certificate: %w", err)
	case <-ctx.Done():
	}
	s.stopping.Store(true)
	s.Log.Info("stopping: unready, then draining", "delay", s.ShutdownDelay)
	time.Sleep(s.ShutdownDelay)
	sctx, cancel := context.WithTimeout(context.Background(), s.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}
