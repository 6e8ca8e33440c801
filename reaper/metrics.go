package reaper

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the token reaper's Prometheus series.
type Metrics struct {
	deleted *prometheus.CounterVec
	passes  *prometheus.CounterVec
	errors  *prometheus.CounterVec
	noMeta  prometheus.Gauge
	tokens  prometheus.Gauge
	leader  prometheus.Gauge
}

// NewMetrics registers the reaper's series with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_reaper_tokens_deleted_total",
			Help: "Login tokens of the auth method the reaper deleted, by reason: pod_gone, uid_mismatch (another pod of that name), superseded (the pod holds a newer token).",
		}, []string{"reason"}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_reaper_passes_total",
			Help: "Passes over the auth method's tokens, by result: ok, or error (some token could not be listed or deleted; retried).",
		}, []string{"result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_reaper_consul_errors_total",
			Help: "Failed Consul requests, by operation: list (the auth method's tokens), delete (one token).",
		}, []string{"op"}),
		noMeta: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshlet_reaper_tokens_without_pod_meta",
			Help: "Tokens of the auth method whose description names no pod, at the last pass: not a meshlet sidecar's login, never deleted.",
		}),
		tokens: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshlet_reaper_login_tokens",
			Help: "Tokens of the auth method left after the last pass.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshlet_reaper_leader",
			Help: "1 while this replica holds the Lease and reaps, else 0.",
		}),
	}
	for _, r := range []Reason{PodGone, UIDMismatch, Superseded} {
		m.deleted.WithLabelValues(string(r))
	}
	for _, r := range []string{"ok", "error"} {
		m.passes.WithLabelValues(r)
	}
	for _, op := range []string{"list", "delete"} {
		m.errors.WithLabelValues(op)
	}
	reg.MustRegister(m.deleted, m.passes, m.errors, m.noMeta, m.tokens, m.leader)
	return m
}
