package cni

import (
	"encoding/base64"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/contract"
)

// TestHostLookup: the runtime's copy when passed (the kubeconfig is not
// even read), else the API server's.
func TestHostLookup(t *testing.T) {
	srv, _ := apiServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("Authorization") != "Bearer tok":
			w.WriteHeader(http.StatusUnauthorized)
		case r.URL.Path == "/api/v1/namespaces/ns/pods/web":
			_, _ = w.Write([]byte(`{"metadata":{"annotations":{"from":"api"}}}`))
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	})
	kubeconfig := fakeAPIKubeconfig(t, srv)
	api := &NetConf{ConflistEntry: contract.ConflistEntry{Kubeconfig: kubeconfig}, lookupTimeout: 5 * time.Second}
	runtime := &NetConf{ConflistEntry: contract.ConflistEntry{Kubeconfig: "/nonexistent"}, lookupTimeout: time.Second}
	runtime.RuntimeConfig.PodAnnotations = map[string]string{"from": "runtime"}
	tests := []struct {
		name, pod string
		conf      *NetConf
		wantFrom  string
		wantErr   string
	}{
		{"runtime copy", "web", runtime, "runtime", ""},
		{"API server", "web", api, "api", ""},
		{"API server, no such pod", "gone", api, "", "read annotations from the API server: pod not found"},
		{"no kubeconfig", "web", &NetConf{ConflistEntry: contract.ConflistEntry{Kubeconfig: "/nonexistent"}, lookupTimeout: time.Second}, "", "read kubeconfig"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ann, from, err := hostLookup{conf: tc.conf, log: slog.New(slog.DiscardHandler)}.annotations("ns", tc.pod)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || from != tc.wantFrom || ann["from"] != tc.wantFrom {
				t.Errorf("%v from %q, %v; want the %s's", ann, from, err, tc.wantFrom)
			}
		})
	}
}

// TestHostApplierResolvesLazily: the backend is resolved on first use, so
// an ADD that applies nothing never detects it, and a bad mode surfaces
// as that call's error.
func TestHostApplierResolvesLazily(t *testing.T) {
	h := newHostApplier(&NetConf{ConflistEntry: contract.ConflistEntry{IptablesMode: "bogus", LockDir: "/run/x"}})
	if h.resolved != nil || h.Backend() != "" {
		t.Fatalf("resolved before use: %+v", h.resolved)
	}
	if err := h.Apply("/proc/self/ns/net", nil, nil); err == nil || !strings.Contains(err.Error(), `iptables mode "bogus"`) {
		t.Errorf("Apply: %v, want the mode error", err)
	}
	if _, err := h.Remove("/proc/self/ns/net", nil); err == nil || !strings.Contains(err.Error(), `iptables mode "bogus"`) {
		t.Errorf("Remove: %v, want the mode error", err)
	}
	h = newHostApplier(&NetConf{ConflistEntry: contract.ConflistEntry{IptablesMode: "legacy", LockDir: "/run/x"}})
	if a, err := h.applier(); err != nil || a.Mode != "legacy" || a.LockDir != "/run/x" || h.Backend() != "legacy" {
		t.Errorf("legacy: %+v %v, backend %q", a, err, h.Backend())
	}
}

// fakeAPIKubeconfig writes a kubeconfig for srv, a TLS test server playing
// the API server, with the token "tok".
func fakeAPIKubeconfig(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`current-context: c
clusters: [{name: k, cluster: {server: "`+srv.URL+`", certificate-authority-data: `+ca+`}}]
users: [{name: u, user: {token: tok}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	return kubeconfig
}
