package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the webhook's Prometheus series.
type Metrics struct {
	reviews    *prometheus.CounterVec
	denials    *prometheus.CounterVec
	injections prometheus.Counter
	duration   prometheus.Histogram
	foreign    prometheus.Counter
}

// NewMetrics registers the webhook's series with reg.
func NewMetrics(reg prometheus.Registerer, dataPlane string) *Metrics {
	m := &Metrics{
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_webhook_reviews_total",
			Help: "Admission reviews answered, by result: injected, skipped (admitted unchanged), denied, error (a request that could not be read).",
		}, []string{"result"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_webhook_denials_total",
			Help: "Pods denied, by the annotation whose value was refused (other: not one annotation's value). A pod with two bad annotations counts under both.",
		}, []string{"annotation"}),
		injections: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "meshlet_webhook_injections_total",
			Help:        "Pods given a sidecar.",
			ConstLabels: prometheus.Labels{"data_plane": dataPlane},
		}),
		// A review takes tens to hundreds of microseconds; the API server's
		// timeout is seconds. The buckets resolve both ends.
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshlet_webhook_review_duration_seconds",
			Help:    "Time from reading a review's request to writing its answer.",
			Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .1, 1},
		}),
	}
	m.foreign = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshlet_webhook_other_injector_pods_total",
		Help: "Pods admitted as they are because another injector (consul-k8s) injected them: meshlet neither injects nor registers them.",
	})
	for _, r := range []string{resultInjected, resultSkipped, resultDenied, resultError} {
		m.reviews.WithLabelValues(r) // present at 0, so rate() works from the start
	}
	reg.MustRegister(m.reviews, m.denials, m.injections, m.duration, m.foreign)
	return m
}

func (m *Metrics) review(result string, deniedBy []string, d time.Duration) {
	if m == nil {
		return
	}
	m.reviews.WithLabelValues(result).Inc()
	for _, a := range deniedBy {
		m.denials.WithLabelValues(a).Inc()
	}
	if result == resultInjected {
		m.injections.Inc()
	}
	m.duration.Observe(d.Seconds())
}

func (m *Metrics) otherInjector() {
	if m != nil {
		m.foreign.Inc()
	}
}
