package reaper

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestFlags: every bad flag is refused before anything starts, naming the
// flag and what was expected; the defaults are the documented ones.
func TestFlags(t *testing.T) {
	for _, env := range []string{"HOST_IP", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT",
		"CONSUL_CACERT_PEM", "POD_NAMESPACE"} {
		t.Setenv(env, "")
	}
	base := []string{"-auth-method", "meshlet-k8s", "-http-addr", "10.0.0.1:8500", "-token-file", "/consul/acl/token", "-namespace", "meshlet"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-auth-method", ""}, "-auth-method is empty"},
		{[]string{"-interval", "500ms"}, "-interval 500ms: expected at least 1s"},
		{[]string{"-interval", "soon"}, `invalid value "soon" for flag -interval`},
		{[]string{"-grace", "-1s"}, "-grace -1s: expected 0 or more"},
		{[]string{"-listen", "9403"}, `-listen "9403": expected host:port`},
		{[]string{"-namespace", ""}, "-namespace is empty"},
		{[]string{"-namespace", "Meshlet"}, `-namespace "Meshlet": expected a namespace name`},
		{[]string{"-lease-name", ""}, `-lease-name "": expected an object name`},
		{[]string{"-lease-name", "token_reaper"}, `-lease-name "token_reaper": expected an object name`},
		{[]string{"-http-addr", ""}, "-http-addr is empty"},
		{[]string{"-token-file", ""}, "-token-file is empty and $CONSUL_HTTP_TOKEN unset"},
		{[]string{"-log-level", "loud"}, `-log-level "loud": expected debug, info, warn or error`},
		{[]string{"extra"}, `unexpected arguments ["extra"]`},
		{[]string{"-reap-everything"}, "flag provided but not defined: -reap-everything"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			_, err := flags(append(append([]string{}, base...), tc.args...), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v: got %v, want an error with %q", tc.args, err, tc.want)
			}
		})
	}

	// Every bad flag at once: each is named.
	_, err := flags([]string{"-interval", "0s", "-grace", "-5s", "-listen", "x", "-namespace", "", "-http-addr", ""}, io.Discard)
	for _, want := range []string{"-auth-method", "-interval", "-grace", "-listen", "-namespace", "-http-addr", "-token-file"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("all bad at once: %v does not name %s", err, want)
		}
	}

	o, err := flags(base, io.Discard)
	if err != nil {
		t.Fatalf("good flags refused: %v", err)
	}
	if o.cfg.Interval != 30*time.Second || o.cfg.Grace != 5*time.Second || o.cfg.Debounce != time.Second ||
		o.listen != ":9403" || o.leaseName != "meshlet-token-reaper" || o.cfg.AuthMethod != "meshlet-k8s" {
		t.Errorf("defaults changed: %+v", o)
	}
	// The chart's way: the namespace and the token from the environment.
	t.Setenv("POD_NAMESPACE", "meshlet")
	t.Setenv("CONSUL_HTTP_TOKEN", "from-env")
	if o, err := flags([]string{"-auth-method", "m", "-http-addr", "10.0.0.1:8500", "-grace", "0s"}, io.Discard); err != nil || o.namespace != "meshlet" {
		t.Errorf("namespace from $POD_NAMESPACE and token from $CONSUL_HTTP_TOKEN: %v, namespace %q", err, o.namespace)
	}
}

// TestServeHTTP: /readyz waits for the pod cache, /healthz answers at
// once, /metrics has the reaper's series.
func TestServeHTTP(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := New(Config{}, nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(reg))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveHTTP(ctx, ln, r, reg) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz %d", code)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "pod cache") {
		t.Errorf("/readyz before the cache is filled: %d %q", code, body)
	}
	r.synced.Store(true)
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz once filled: %d", code)
	}
	_, body := get("/metrics")
	for _, s := range []string{`meshlet_reaper_tokens_deleted_total{reason="pod_gone"} 0`, "meshlet_reaper_tokens_without_pod_meta 0",
		`meshlet_reaper_passes_total{result="error"} 0`, `meshlet_reaper_consul_errors_total{op="delete"} 0`, "meshlet_reaper_leader 0"} {
		if !strings.Contains(body, s) {
			t.Errorf("/metrics has no %s", s)
		}
	}
}
