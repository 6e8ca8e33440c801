package dataplane

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/test/consultest"
)

// recordedEnvoyPage is Envoy's /stats/prometheus as Envoy wrote it:
// whole families (counters, gauges, histograms), verbatim and in their
// order, of the page recorded from a running Envoy in DataDog's
// integrations-core (BSD-3-Clause),
// envoy/tests/fixtures/openmetrics/prometheus at commit
// 81fc8c567e5cc2a37b8cc1cf0d2250570c570566: 42 of its families, the rest
// left out for size. It keeps Envoy's quirks: `{}` on unlabelled samples,
// a blank line after each family, no HELP lines, sums printed to 31
// digits, a gauge above 2^63, a series whose label is not its
// neighbour's.
const recordedEnvoyPage = "testdata/envoy-stats-prometheus.txt"

// appWithCollisions is an app's page holding, besides its own families, a
// family Envoy's page has too (envoy_server_live) and a counter named
// like the _count samples of one of Envoy's histograms: either, merged
// as is, makes a page the parser refuses.
const appWithCollisions = `# HELP app_requests_total Requests the app served.
# TYPE app_requests_total counter
app_requests_total{code="200"} 7
app_requests_total{code="500"} 1
# HELP app_latency_seconds How long the app took.
# TYPE app_latency_seconds histogram
app_latency_seconds_bucket{le="0.1"} 5
app_latency_seconds_bucket{le="1"} 8
app_latency_seconds_bucket{le="+Inf"} 8
app_latency_seconds_sum 1.25
app_latency_seconds_count 8
# TYPE envoy_server_live gauge
envoy_server_live 0
# TYPE envoy_http_downstream_rq_time_count counter
envoy_http_downstream_rq_time_count 3
`

// appFamiliesKept are appWithCollisions' families that get on the page.
var appFamiliesKept = []string{"app_requests_total", "app_latency_seconds"}

// parsePage parses a text page with the Prometheus parser, failing t when
// the page is not valid.
func parsePage(t *testing.T, page string) map[string]*dto.MetricFamily {
	t.Helper()
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(strings.NewReader(page))
	if err != nil {
		t.Fatalf("the page is not a valid Prometheus text page: %v\n%s", err, page)
	}
	return fams
}

// recordedEnvoyAdmin serves the recorded page as Envoy's admin does.
func recordedEnvoyAdmin(t *testing.T) (url string, page map[string]*dto.MetricFamily) {
	t.Helper()
	b, err := os.ReadFile(recordedEnvoyPage)
	if err != nil {
		t.Fatal(err)
	}
	page = parsePage(t, string(b))
	if len(page) != 42 {
		t.Fatalf("the recorded page has %d families, want 42", len(page))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stats/prometheus", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
		_, _ = w.Write(b)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL + "/stats/prometheus", page
}

// scrapeEnvoyMerged serves the merger as the metrics sidecar does (its
// own registry, Envoy's page, the app's) and scrapes it once.
func scrapeEnvoyMerged(t *testing.T, envoyURL, appURL string, timeout time.Duration) (int, string, *mergeHandler) {
	t.Helper()
	h := newMergeHandler(prometheus.NewRegistry(), envoyURL, appURL)
	code, page := scrapeOnce(t, h, timeout)
	return code, page, h
}

// TestMergeEnvoyMetrics: Envoy's recorded page merged with an app's, as
// the metrics sidecar of data plane envoy serves them: a valid page
// holding every one of Envoy's families exactly as Envoy wrote it, the
// app's own families, and not the app's that collide with Envoy's (left
// out, counted as conflict); every way the app's page can fail leaves
// Envoy's page alone, valid, and the failure counted on it.
func TestMergeEnvoyMetrics(t *testing.T) {
	envoyURL, envoy := recordedEnvoyAdmin(t)
	closed := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(consultest.FreePort(t))) + "/metrics"
	for _, tc := range []struct {
		name    string
		app     string
		timeout time.Duration
		merged  bool
		reason  string // the failure counted
	}{
		{"merged, collisions left out", appServing(t, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, appWithCollisions) }), 0, true, mergeConflict},
		{"app down", closed, 0, false, mergeUnreachable},
		{"app slow", appServing(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(2 * time.Second):
			}
			io.WriteString(w, appWithCollisions)
		}), 200 * time.Millisecond, false, mergeTimeout},
		{"app 500", appServing(t, func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "oops", http.StatusInternalServerError) }), 0, false, mergeStatus},
		{"app page invalid", appServing(t, func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "# TYPE app_requests_total counter\napp_requests_total{code=\"200\" 7\n")
		}), 0, false, mergeInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, page, h := scrapeEnvoyMerged(t, envoyURL, tc.app, tc.timeout)
			if code != http.StatusOK {
				t.Fatalf("scrape: HTTP %d %s", code, page)
			}
			got := parsePage(t, page)
			for name, want := range envoy {
				if !proto.Equal(got[name], want) {
					t.Errorf("Envoy's family %s on the merged page:\n%v\nwant, as Envoy wrote it:\n%v", name, got[name], want)
				}
			}
			for _, name := range appFamiliesKept {
				if _, ok := got[name]; ok != tc.merged {
					t.Errorf("the app's family %s on the page: %v, want %v", name, ok, tc.merged)
				}
			}
			// Envoy's, from Envoy's page + the merger's counter + the app's.
			want := len(envoy) + 1
			if tc.merged {
				want += len(appFamiliesKept)
			}
			if len(got) != want {
				t.Errorf("%d families on the page, want %d", len(got), want)
			}
			for _, r := range []string{mergeUnreachable, mergeTimeout, mergeStatus, mergeInvalid, mergeConflict} {
				want := 0.0
				if r == tc.reason {
					want = 1
				}
				if v := testutil.ToFloat64(h.failures.WithLabelValues(r)); v != want {
					t.Errorf("failures{reason=%s} = %v, want %v", r, v, want)
				}
			}
			// The counter is on the page it was counted for.
			if !strings.Contains(page, `meshlet_proxy_metrics_merge_failures_total{reason="`+tc.reason+`"} 1`) {
				t.Errorf("the page does not show the failure %s:\n%s", tc.reason, page)
			}
		})
	}
}

// TestMergeEnvoyMetricsProxyDown: without Envoy's page the scrape fails
// (503), rather than answer a page with every Envoy series gone.
func TestMergeEnvoyMetricsProxyDown(t *testing.T) {
	closed := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(consultest.FreePort(t))) + "/stats/prometheus"
	app := appServing(t, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, appPage) })
	code, body, _ := scrapeEnvoyMerged(t, closed, app, 0)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "the proxy's metrics") {
		t.Fatalf("scrape with Envoy's admin closed: HTTP %d %q, want 503 naming the proxy's metrics", code, body)
	}
}

// TestMergeFamiliesSampleNames: a counter named like a histogram's _count
// samples makes the parser refuse the page when both are written; the
// merge leaves the later page's out.
func TestMergeFamiliesSampleNames(t *testing.T) {
	envoy := parsePage(t, "# TYPE rq_time histogram\nrq_time_bucket{le=\"+Inf\"} 2\nrq_time_sum 3\nrq_time_count 2\n")
	app := parsePage(t, "# TYPE rq_time_count counter\nrq_time_count 9\n# TYPE rq_time_sum_total counter\nrq_time_sum_total 1\n")
	write := func(fams []*dto.MetricFamily) string {
		var b strings.Builder
		for _, f := range fams {
			if _, err := expfmt.MetricFamilyToText(&b, f); err != nil {
				t.Fatal(err)
			}
		}
		return b.String()
	}
	var p expfmt.TextParser
	if _, err := p.TextToMetricFamilies(strings.NewReader(write(append(sortedFamilies(envoy), sortedFamilies(app)...)))); err == nil {
		t.Fatal("the two pages written one after the other parse: the collision this test is about does not exist")
	}
	out, dropped := mergeFamilies(sortedFamilies(envoy), sortedFamilies(app))
	got := parsePage(t, write(out))
	if _, ok := got["rq_time_sum_total"]; !ok || got["rq_time"] == nil || got["rq_time_count"] != nil || dropped[0] != 0 || dropped[1] != 1 {
		t.Errorf("merged: %v, dropped %v; want rq_time and rq_time_sum_total, rq_time_count left out of the second page", got, dropped)
	}
}

// TestMergeMetricsCommand: `meshlet-proxy merge-metrics` serves the merged
// page on its address and path (not /metrics when told otherwise), and
// stops when its context ends.
func TestMergeMetricsCommand(t *testing.T) {
	envoyURL, _ := recordedEnvoyAdmin(t)
	app := appServing(t, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, appPage) })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(consultest.FreePort(t)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- MergeMetricsMain(ctx, []string{"-metrics-addr", addr, "-metrics-path", "/scrape",
			"-proxy-metrics", envoyURL, "-merge-app-metrics", app}, io.Discard)
	}()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	var code int
	var page string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if code, page = get("/scrape"); code != 0 {
			break
		}
	}
	if code != http.StatusOK {
		t.Fatalf("GET /scrape: %d %s", code, page)
	}
	got := parsePage(t, page)
	for _, name := range []string{"envoy_cluster_upstream_cx_total", "envoy_http_downstream_rq_time", "app_requests_total", "meshlet_proxy_metrics_merge_failures_total"} {
		if got[name] == nil {
			t.Errorf("the merged page has no %s:\n%s", name, page)
		}
	}
	if got["go_goroutines"] != nil || got["process_cpu_seconds_total"] != nil {
		t.Error("the merger serves Go or process collectors, which would push an app's own off the page")
	}
	if code, _ := get("/metrics"); code != http.StatusNotFound {
		t.Errorf("GET /metrics with -metrics-path /scrape: %d, want 404", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("merge-metrics: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("merge-metrics did not stop with its context")
	}
}

// TestMergeMetricsFlags: bad flags are refused, naming the flag.
func TestMergeMetricsFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-metrics-path", "scrape"},
		{"-proxy-metrics", "127.0.0.1:19000/stats/prometheus"},
		{"-merge-app-metrics", "https://127.0.0.1:8080/metrics"},
		{"-metrics-addr", "20200"},
		{"extra"},
	} {
		err := MergeMetricsMain(context.Background(), args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%q: %v, want an error naming %s", args, err, args[0])
		}
	}
}
