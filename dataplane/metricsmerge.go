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
// pod's scrape port returns the proxy's metrics and the app's, fetched
// from the app's own endpoint at that moment, as one valid Prometheus
// exposition. The app's page being down, slow, not 2xx or not valid
// leaves the proxy's metrics alone and counts the failure: a broken page
// from the app never makes the scrape fail or the page invalid.
//
// One merger serves both data planes that merge: meshlet-proxy, whose own
// registry holds the proxy's metrics, and data plane envoy's metrics
// sidecar (`meshlet-proxy merge-metrics`), which fetches Envoy's page from
// its admin listener as it fetches the app's.

// appMetricsTimeout bounds the fetch of each page the merger reads (the
// app's, Envoy's): the two together stay under Prometheus' default scrape
// timeout (10s), so that a slow app still leaves time to answer with the
// proxy's own.
const appMetricsTimeout = 3 * time.Second

// appMetricsMax bounds a page read into memory.
const appMetricsMax = 16 << 20

// The reasons of meshlet_proxy_metrics_merge_failures_total.
const (
	mergeUnreachable = "unreachable"
	mergeTimeout     = "timeout"
	mergeStatus      = "status"
	mergeInvalid     = "invalid"
	mergeConflict    = "conflict"
)

// mergeHandler serves the proxy's metrics merged with the app's.
type mergeHandler struct {
	own prometheus.Gatherer // the serving process' registry
	// proxyURL is Envoy's page (its admin's /stats/prometheus); "" when
	// the proxy's metrics are own's (meshlet-proxy).
	proxyURL string
	appURL   string // the app's metrics page; "": none to merge
	client   *http.Client
	failures *prometheus.CounterVec
}

// newMergeHandler registers its failure counter with reg, whose metrics
// it serves with the pages at proxyURL (may be "") and appURL.
func newMergeHandler(reg *prometheus.Registry, proxyURL, appURL string) *mergeHandler {
	h := &mergeHandler{own: reg, proxyURL: proxyURL, appURL: appURL, client: &http.Client{Timeout: appMetricsTimeout},
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshlet_proxy_metrics_merge_failures_total",
			Help: "Scrapes where the app's metrics could not be merged whole, by why: unreachable, timeout, status (not 2xx), invalid (not a Prometheus text page): the proxy's alone; conflict: the app's families named like the proxy's (or like their _bucket, _sum, _count samples) left out."},
			[]string{"reason"})}
	for _, r := range []string{mergeUnreachable, mergeTimeout, mergeStatus, mergeInvalid, mergeConflict} {
		h.failures.WithLabelValues(r)
	}
	reg.MustRegister(h.failures)
	return h
}

func (h *mergeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var proxy []*dto.MetricFamily
	if h.proxyURL != "" {
		fams, _, err := fetchFamilies(r.Context(), h.client, h.proxyURL)
		if err != nil {
			// The proxy's metrics are the page: without them the scrape
			// fails, and Prometheus' up says the proxy is not answering,
			// rather than every proxy series vanishing from a page that
			// looks whole.
			http.Error(w, "the proxy's metrics: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		proxy = sortedFamilies(fams)
	}
	var app []*dto.MetricFamily
	if h.appURL != "" {
		fams, reason, _ := fetchFamilies(r.Context(), h.client, h.appURL)
		if reason != "" {
			h.failures.WithLabelValues(reason).Inc()
		}
		app = sortedFamilies(fams)
	}
	own, err := h.own.Gather()
	if err != nil {
		http.Error(w, "gathering the proxy's metrics: "+err.Error(), http.StatusInternalServerError)
		return
	}
	families, dropped := mergeFamilies(own, proxy, app)
	if dropped[2] > 0 {
		// Counted on the page it is about: gathered again.
		h.failures.WithLabelValues(mergeConflict).Inc()
		if own, err = h.own.Gather(); err != nil {
			http.Error(w, "gathering the proxy's metrics: "+err.Error(), http.StatusInternalServerError)
			return
		}
		families, _ = mergeFamilies(own, proxy, app)
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

// fetchFamilies fetches and parses the Prometheus text page at url; on
// failure reason is the failure counter's label and err says what went
// wrong.
func fetchFamilies(ctx context.Context, client *http.Client, url string) (fams map[string]*dto.MetricFamily, reason string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, mergeUnreachable, fmt.Errorf("%s: %w", url, err)
	}
	// The text format only: it is what the parser reads.
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := client.Do(req)
	if err != nil {
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, mergeTimeout, err
		}
		return nil, mergeUnreachable, err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, mergeStatus, fmt.Errorf("GET %s: HTTP %s", url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, appMetricsMax+1))
	if err != nil {
		return nil, mergeUnreachable, fmt.Errorf("GET %s: %w", url, err)
	}
	if len(body) > appMetricsMax {
		return nil, mergeInvalid, fmt.Errorf("GET %s: more than %d bytes", url, appMetricsMax)
	}
	if fams, err = parseText(string(body)); err != nil {
		return nil, mergeInvalid, fmt.Errorf("GET %s: %w", url, err)
	}
	return fams, "", nil
}

// parseText parses a Prometheus text page, refusing what the encoder
// would not write back (a family without samples is dropped).
func parseText(s string) (map[string]*dto.MetricFamily, error) {
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(strings.NewReader(s))
	if err != nil {
		return nil, fmt.Errorf("not a Prometheus text page: %w", err)
	}
	for name, f := range fams {
		if len(f.GetMetric()) == 0 {
			delete(fams, name)
		}
	}
	return fams, nil
}

func sortedFamilies(fams map[string]*dto.MetricFamily) []*dto.MetricFamily {
	out := make([]*dto.MetricFamily, 0, len(fams))
	for _, f := range fams {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

// mergeFamilies is the families of pages, each page's in turn, sorted by
// name. A family that would write a sample name another one already took
// is left out (dropped[i] counts page i's): two families of one name, or a
// histogram h and a counter h_count, make a page the parser refuses.
// Pages are in order of precedence: the serving process' own, the
// proxy's, the app's.
func mergeFamilies(pages ...[]*dto.MetricFamily) (out []*dto.MetricFamily, dropped []int) {
	dropped = make([]int, len(pages))
	taken := map[string]bool{}
	for i, page := range pages {
	families:
		for _, f := range page {
			names := sampleNames(f)
			for _, n := range names {
				if taken[n] {
					dropped[i]++
					continue families
				}
			}
			for _, n := range names {
				taken[n] = true
			}
			out = append(out, f)
		}
	}
	slices.SortFunc(out, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out, dropped
}

// sampleNames are the names f takes on a text page: its own (its TYPE
// line), and a histogram's _bucket, _sum and _count, a summary's _sum and
// _count, which the parser reads as f's.
func sampleNames(f *dto.MetricFamily) []string {
	n := f.GetName()
	switch f.GetType() {
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		return []string{n, n + "_bucket", n + "_sum", n + "_count"}
	case dto.MetricType_SUMMARY:
		return []string{n, n + "_sum", n + "_count"}
	}
	return []string{n}
}
