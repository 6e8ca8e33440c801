package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/contract"
)

// Metrics are the node agent's Prometheus series.
type Metrics struct {
	registered   prometheus.Gauge
	consulOps    *prometheus.CounterVec
	failures     *prometheus.CounterVec
	orphans      prometheus.Counter
	reregistered prometheus.Counter
	reconcile    prometheus.Histogram
	cniInstalled prometheus.Gauge
	cniEvents    *prometheus.CounterVec
	repairs      *prometheus.CounterVec
	// sidecarProblems counts the sidecars' problem reports.
	sidecarProblems *prometheus.CounterVec
}

// NewMetrics registers the node agent's series with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		registered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshlet_agent_registered_pods",
			Help: "Pods of this node whose service and sidecar proxy the agent holds registered with the node's Consul agent.",
		}),
		consulOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_agent_consul_requests_total",
			Help: "Requests to the node's Consul agent, by operation (register, deregister, update_ttl, list) and result (ok, error).",
		}, []string{"op", "result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_agent_sync_failures_total",
			Help: "Pods the agent could not sync, by reason: invalid_pod (an Event on the pod says why), error (Consul or API server; retried).",
		}, []string{"reason"}),
		orphans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshlet_agent_orphans_removed_total",
			Help: "Registrations managed by meshlet that no pod of this node backed any more, removed by the resync.",
		}),
		reregistered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshlet_agent_reregistrations_total",
			Help: "Pods registered again because the Consul agent no longer held their registrations (it restarted without them).",
		}),
		// A reconcile is one or two local HTTP calls: milliseconds; the
		// buckets also resolve a Consul agent under load.
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshlet_agent_reconcile_duration_seconds",
			Help:    "Time to sync one pod with the Consul agent.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5},
		}),
		cniInstalled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshlet_agent_cni_installed",
			Help: "1 when meshlet-cni is installed and chained into the node's primary CNI config, else 0.",
		}),
		cniEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_agent_cni_events_total",
			Help: "What keeping meshlet-cni chained took, by kind: rechained (the entry was put back), fighting (a primary CNI keeps removing it), failed.",
		}, []string{"kind"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_agent_unprotected_pods_total",
			Help: "Injected pods found running without meshlet's redirection, by what the agent did: repaired, deleted, reported, failed.",
		}, []string{"action"}),
		sidecarProblems: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_agent_sidecar_problems_total",
			Help: "Problems the node's sidecars reported of their own pods, by reason (LoginFailed; unknown for an unreadable report) and result: recorded (an Event on the pod), bad_request, forbidden (not from the pod's IP, or the pod is not injected), unknown_pod.",
		}, []string{"reason", "result"}),
	}
	for _, op := range []string{"register", "deregister", "update_ttl", "list"} {
		for _, r := range []string{"ok", "error"} {
			m.consulOps.WithLabelValues(op, r)
		}
	}
	for _, r := range []string{"invalid_pod", "error"} {
		m.failures.WithLabelValues(r)
	}
	for _, k := range []string{"rechained", "fighting", "failed"} {
		m.cniEvents.WithLabelValues(k)
	}
	for _, r := range contract.ProblemReasons() {
		for _, res := range []string{problemRecorded, problemForbidden, problemUnknownPod} {
			m.sidecarProblems.WithLabelValues(string(r), res)
		}
	}
	m.sidecarProblems.WithLabelValues("unknown", problemBadRequest)
	reg.MustRegister(m.registered, m.consulOps, m.failures, m.orphans, m.reregistered, m.reconcile,
		m.cniInstalled, m.cniEvents, m.repairs, m.sidecarProblems)
	return m
}

func (m *Metrics) consulOp(op string, err error) {
	r := "ok"
	if err != nil {
		r = "error"
	}
	m.consulOps.WithLabelValues(op, r).Inc()
}
