package dataplane

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/logs"
)

// Data plane envoy's metrics sidecar, `meshlet-proxy merge-metrics`: with
// metrics merging on, it serves the pod's scrape port and path, each
// scrape fetching Envoy's page from its admin listener and the app's from
// its metrics port, merged by the merger meshlet-proxy serves its own
// with (metricsmerge.go). Envoy's page could also come from a Prometheus
// listener of Envoy's, which its inline bootstrap does not have; the admin
// listener is on the pod's loopback in every bootstrap the webhook writes.

// envoyMetricsURL is Envoy's Prometheus page on its admin listener.
var envoyMetricsURL = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(contract.EnvoyAdminPort)) + "/stats/prometheus"

// MergeMetricsMain is `meshlet-proxy merge-metrics`: it serves until ctx
// ends.
func MergeMetricsMain(ctx context.Context, args []string, stderr io.Writer) error {
	var lf logs.Flags
	fs := flag.NewFlagSet("meshlet proxy merge-metrics", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("metrics-addr", ":"+strconv.Itoa(contract.ProxyMetricsPort), "HTTP address of the merged page: the pod's prometheus-scrape-port, on the pod's addresses")
	path := fs.String("metrics-path", "/metrics", "the path of the merged page (prometheus-scrape-path)")
	proxy := fs.String("proxy-metrics", envoyMetricsURL, "the proxy's Prometheus page, http://host:port/path: Envoy's, from its admin listener")
	app := fs.String("merge-app-metrics", "", "the app's metrics page, http://host:port/path (service-metrics-port, service-metrics-path); empty: the proxy's alone")
	lf.Register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case !strings.HasPrefix(*path, "/"):
		return fmt.Errorf("-metrics-path %q: expected a path starting with '/'", *path)
	case !validAppMetricsURL(*proxy):
		return fmt.Errorf("-proxy-metrics %q: expected http://host:port/path", *proxy)
	case *app != "" && !validAppMetricsURL(*app):
		return fmt.Errorf("-merge-app-metrics %q: expected http://host:port/path", *app)
	}
	if _, _, err := net.SplitHostPort(*addr); err != nil {
		return fmt.Errorf("-metrics-addr %q: expected host:port: %w", *addr, err)
	}
	log, err := lf.Logger(stderr)
	if err != nil {
		return err
	}
	// Only the merger's own counter: no Go or process collectors, whose
	// go_* and process_* families would push the app's (a Go app has
	// them too) off the page as conflicts.
	reg := prometheus.NewRegistry()
	mux := http.NewServeMux()
	mux.Handle(*path, newMergeHandler(reg, *proxy, *app))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("-metrics-addr %s: %w", *addr, err)
	}
	log.Info("serving merged metrics", "addr", ln.Addr().String(), "path", *path, "proxy", *proxy, "app", *app)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serving merged metrics on %s: %w", *addr, err)
	case <-ctx.Done():
	}
	// A scrape under way finishes; none waits longer than its two fetches.
	sctx, cancel := context.WithTimeout(context.Background(), 2*appMetricsTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("stopping the merged metrics server: %w", err)
	}
	return nil
}
