package dataplane

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// An expose path forwards exactly its path to the app, in plain HTTP, and
// nothing else of the app: kubelet's rewritten probe gets the app's
// answer, a caller guessing other paths gets 404.
func TestExposeServers(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ready" {
			w.WriteHeader(http.StatusServiceUnavailable) // the app's own verdict passes through
		}
		fmt.Fprintf(w, "app saw %s", r.URL.Path)
	}))
	defer app.Close()
	local := strings.TrimPrefix(app.URL, "http://")
	port := freePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	srvs := exposeServers([]ExposePath{{Listen: listen, Path: "/live", Local: local}, {Listen: listen, Path: "/ready", Local: local}})
	if len(srvs) != 1 {
		t.Fatalf("%d servers for two paths on one port, want 1", len(srvs))
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srvs[0].Serve(ln) }()
	defer srvs[0].Close()
	for _, tc := range []struct {
		path string
		code int
		body string
	}{
		{"/live", 200, "app saw /live"},
		{"/ready", 503, "app saw /ready"},
		{"/live/admin", 404, ""},
		{"/", 404, ""},
	} {
		resp, err := http.Get("http://" + listen + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || (tc.body != "" && string(b) != tc.body) {
			t.Errorf("GET %s = %d %q, want %d %q", tc.path, resp.StatusCode, b, tc.code, tc.body)
		}
	}
}
