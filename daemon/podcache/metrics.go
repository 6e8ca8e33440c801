package podcache

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the pod cache's Prometheus series, registered in the node
// agent's registry.
type Metrics struct {
	requests *prometheus.CounterVec
	duration prometheus.Histogram
}

// NewMetrics registers the pod cache's series with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_podcache_requests_total",
			Help: "meshlet-cni's pod lookups answered, by result: hit; miss (not in the cache, even after the wait); uid_mismatch (another pod of that name cached); terminating (the cached pod is terminating and the request has no UID); bad_request; sandbox_notice (meshlet-cni's notice that a pod's sandbox is up, taken). All but hit and sandbox_notice send the plugin to the API server.",
		}, []string{"result"}),
		// A hit takes microseconds; a miss, the whole wait (200 ms by
		// default). The buckets resolve both, and a late pod in between.
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshlet_podcache_answer_duration_seconds",
			Help:    "Time from accepting a lookup to answering it, the wait for a late pod included.",
			Buckets: []float64{.0001, .0005, .001, .005, .01, .025, .05, .1, .2, .5, 1},
		}),
	}
	for _, r := range []string{resultHit, resultMiss, resultUIDMismatch, resultTerminating, resultBadRequest, resultNotice} {
		m.requests.WithLabelValues(r) // present at 0, so rate() works from the start
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

func (m *Metrics) answered(result string, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(result).Inc()
	m.duration.Observe(d.Seconds())
}
