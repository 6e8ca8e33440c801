package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// Metrics merging (the seed's enable-metrics-merging): one scrape of the
// proxy's metrics port returns the proxy's metrics and the app's, fetched
// from the app's own endpoint at that moment, as one valid Prometheus
// exposition. The app's page being down, slow, not 2xx or not valid
// leaves the proxy's metrics alone and counts the failure: a broken page
// from the app never makes the scrape fail or the page invalid.

// appMetricsTimeout bounds the fetch of the app's page: well under
// Prometheus' default scrape timeout (10s), so that a slow app still
// leaves time to answer with the proxy's own.
const appMetricsTimeout = 3 * time.Second

// appMetricsMax bounds the app's page read into memory.
const appMetricsMax = 16 << 20

// mergeHandler serves the proxy's metrics merged with the app's.
type mergeHandler struct {
	gather   prometheus.Gatherer // the proxy's
	appURL   string              // the app's metrics page
	client   *http.Client
	failures *prometheus.CounterVec
}

// newMergeHandler registers its failure counter with reg.
func newMergeHandler(reg *prometheus.Registry, appURL string) *mergeHandler {
	h := &mergeHandler{gather: reg, appURL: appURL, client: &http.Client{Timeout: appMetricsTimeout},
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshlet_proxy_metrics_merge_failures_total",
			Help: "Scrapes where the app's metrics could not be merged whole, by why: unreachable, timeout, status (not 2xx), invalid (not a Prometheus text page): the proxy's alone; conflict: the app's families named like the proxy's left out."},
			[]string{"reason"})}
	for _, r := range []string{"unreachable", "timeout", "status", "invalid", "conflict"} {
		h.failures.WithLabelValues(r)
	}
	reg.MustRegister(h.failures)
	return h
}

func (h *mergeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	app, reason := h.appFamilies(r.Context())
	if reason != "" {
		h.failures.WithLabelValues(reason).Inc()
	}
	own, err := h.gather.Gather()
	if err != nil {
		http.Error(w, "gathering the proxy's metrics: "+err.Error(), http.StatusInternalServerError)
		return
	}
	families, conflict := mergeFamilies(own, app)
	if conflict {
		// Counted on the page it is about: gathered again.
		h.failures.WithLabelValues("conflict").Inc()
		if own, err = h.gather.Gather(); err != nil {
			http.Error(w, "gathering the proxy's metrics: "+err.Error(), http.StatusInternalServerError)
			return
		}
		families, _ = mergeFamilies(own, app)
	}
	format := expfmt.NewFormat(expfmt.TypeTextPlain)
	w.Header().Set("Content-Type", string(format))
	enc := expfmt.NewEncoder(w, format)
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			return // the connection went; nothing to tell
		}
	}
}

// appFamilies fetches and parses the app's page; reason says why not.
func (h *mergeHandler) appFamilies(ctx context.Context) (map[string]*dto.MetricFamily, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.appURL, nil)
	if err != nil {
		return nil, "unreachable"
	}
	// The text format only: it is what the parser reads.
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := h.client.Do(req)
	if err != nil {
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, "timeout"
		}
		return nil, "unreachable"
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, "status"
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, appMetricsMax+1))
	if err != nil {
		return nil, "unreachable"
	}
	if len(body) > appMetricsMax {
		return nil, "invalid"
	}
	fams, err := parseText(string(body))
	if err != nil {
		return nil, "invalid"
	}
	return fams, ""
}

// parseText parses a Prometheus text page, refusing what the encoder
// would not write back (a family without samples is dropped).
func parseText(s string) (map[string]*dto.MetricFamily, error) {
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(strings.NewReader(s))
	if err != nil {
		return nil, fmt.Errorf("the app's metrics: %w", err)
	}
	for name, f := range fams {
		if len(f.GetMetric()) == 0 {
			delete(fams, name)
		}
	}
	return fams, nil
}

// mergeFamilies is the proxy's families and the app's, sorted by name; a
// family of the app's named like one of the proxy's is left out (two
// families of one name would make the page invalid), and conflict says so.
func mergeFamilies(own []*dto.MetricFamily, app map[string]*dto.MetricFamily) (out []*dto.MetricFamily, conflict bool) {
	out = append(out, own...)
	names := map[string]bool{}
	for _, f := range own {
		names[f.GetName()] = true
	}
	for name, f := range app {
		if names[name] {
			conflict = true
			continue
		}
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out, conflict
}
