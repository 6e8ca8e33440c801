package dataplane

import (
	"crypto/x509"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's counters, served on its local metrics port.
type Metrics struct {
	conns  *prometheus.CounterVec
	active *prometheus.GaugeVec
	bytes  *prometheus.CounterVec
	loads  *prometheus.CounterVec
	expiry prometheus.Gauge
	dials  *prometheus.CounterVec
}

// Directions of a connection.
const (
	dirInbound     = "inbound"     // the public listener, to the app
	dirOutbound    = "outbound"    // transparent, to a mesh service
	dirPassthrough = "passthrough" // transparent, not a mesh service
	dirUpstream    = "upstream"    // an explicit upstream's listener
)

// Results of a connection.
const (
	resOK        = "ok"
	resDenied    = "denied"     // inbound: intentions deny the caller
	resBadTLS    = "tls_failed" // inbound: no valid client certificate
	resNoHealthy = "no_healthy" // outbound: no healthy instance
	resError     = "error"      // the other side unreachable, Consul failing
	// inbound: closed before sending a byte. A port check, not a caller:
	// kubelet's TCP probes and `meshlet-proxy wait` at every pod start.
	resPortCheck = "port_check"
)

// Results of one dial to an instance (a connection may make several).
const (
	dialOK     = "ok"
	dialFailed = "failed"
	dialOutrun = "outrun" // another instance answered first
)

// NewMetrics registers the proxy's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshlet_proxy_connections_total",
			Help: "Connections handled, by direction and result."}, []string{"direction", "result"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshlet_proxy_active_connections",
			Help: "Connections open now, by direction."}, []string{"direction"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshlet_proxy_bytes_total",
			Help: "Bytes carried, by direction and way (sent: from the connection's caller; received: to it)."}, []string{"direction", "way"}),
	}
	m.loads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshlet_proxy_identity_loads_total",
		Help: "Leaf certificates and CA root lists loaded from the Consul agent (a rotation adds one)."}, []string{"what"})
	m.expiry = prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshlet_proxy_leaf_expiry_timestamp_seconds",
		Help: "When the proxy's current leaf certificate expires (Unix time)."})
	m.dials = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshlet_proxy_instance_dials_total",
		Help: "Dials to a service's instances, by result (ok, failed, outrun: another instance answered first)."}, []string{"result"})
	reg.MustRegister(m.conns, m.active, m.bytes, m.loads, m.expiry, m.dials)
	return m
}

// loaded is Identity.Loaded.
func (m *Metrics) loaded(what string, leaf *x509.Certificate) {
	m.loads.WithLabelValues(what).Inc()
	if leaf != nil {
		m.expiry.Set(float64(leaf.NotAfter.Unix()))
	}
}
