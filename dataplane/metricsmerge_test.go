package dataplane

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const appPage = `# HELP app_requests_total Requests the app served.
# TYPE app_requests_total counter
app_requests_total{code="200"} 7
# TYPE app_queue_depth gauge
app_queue_depth 3
`

// scrapeMerged serves the merge handler for an app at appURL and scrapes
// it once, checking the page is valid; it returns the page and the
// handler.
func scrapeMerged(t *testing.T, appURL string, timeout time.Duration) (string, *mergeHandler) {
	t.Helper()
	reg := prometheus.NewRegistry()
	NewMetrics(reg).conns.WithLabelValues(dirInbound, resOK).Add(2)
	h := newMergeHandler(reg, "", appURL)
	code, b := scrapeOnce(t, h, timeout)
	if code != 200 {
		t.Fatalf("scrape: HTTP %d %s", code, b)
	}
	if _, err := parseText(b); err != nil {
		t.Fatalf("the merged page is not valid: %v\n%s", err, b)
	}
	return b, h
}

// scrapeOnce serves h, its page fetches bounded by timeout (0: h's own),
// and scrapes it once.
func scrapeOnce(t *testing.T, h *mergeHandler, timeout time.Duration) (int, string) {
	t.Helper()
	if timeout > 0 {
		h.client.Timeout = timeout
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func appServing(t *testing.T, h http.HandlerFunc) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL + "/metrics"
}

// TestMergeMetrics: the app's page merged with the proxy's; every way the
// app's page can fail leaves the proxy's alone, valid, and counts why.
func TestMergeMetrics(t *testing.T) {
	closed := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return "http://" + addr + "/metrics"
	}()
	for _, tc := range []struct {
		name    string
		app     string
		timeout time.Duration
		merged  bool
		reason  string // the failure counted
	}{
		{"merged", appServing(t, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, appPage) }), 0, true, ""},
		{"app down", closed, 0, false, "unreachable"},
		{"not 2xx", appServing(t, func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", http.StatusServiceUnavailable) }), 0, false, "status"},
		{"slow", appServing(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(2 * time.Second):
			}
			io.WriteString(w, appPage)
		}), 200 * time.Millisecond, false, "timeout"},
		{"not a metrics page", appServing(t, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "<html>hello</html>\n") }), 0, false, "invalid"},
		{"a family of the proxy's name", appServing(t, func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, appPage+"# TYPE meshlet_proxy_connections_total counter\nmeshlet_proxy_connections_total 99\n")
		}), 0, true, "conflict"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			page, h := scrapeMerged(t, tc.app, tc.timeout)
			if !strings.Contains(page, `meshlet_proxy_connections_total{direction="inbound",result="ok"} 2`) {
				t.Errorf("the proxy's metrics are missing:\n%s", page)
			}
			if got := strings.Contains(page, `app_requests_total{code="200"} 7`) && strings.Contains(page, "app_queue_depth 3"); got != tc.merged {
				t.Errorf("app metrics merged %v, want %v:\n%s", got, tc.merged, page)
			}
			if strings.Contains(page, "meshlet_proxy_connections_total 99") {
				t.Error("the app's family of the proxy's name got in")
			}
			for _, r := range []string{"unreachable", "timeout", "status", "invalid", "conflict"} {
				want := 0.0
				if r == tc.reason {
					want = 1
				}
				if got := testutil.ToFloat64(h.failures.WithLabelValues(r)); got != want {
					t.Errorf("failures{reason=%s} = %v, want %v", r, got, want)
				}
			}
			// The counter is on the page it was counted for.
			if tc.reason != "" && !strings.Contains(page, `meshlet_proxy_metrics_merge_failures_total{reason="`+tc.reason+`"} 1`) {
				t.Errorf("the page does not show the failure:\n%s", page)
			}
		})
	}
}
