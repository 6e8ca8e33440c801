package cni

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// apiServer serves pod GETs on loopback with the given handler.
func apiServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *apiClient) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv, &apiClient{server: srv.URL, token: "tok",
		http: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
}

func TestPodAnnotations(t *testing.T) {
	var calls atomic.Int32
	_, cl := apiServer(t, func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		switch {
		case r.Header.Get("Authorization") != "Bearer tok":
			w.WriteHeader(http.StatusUnauthorized)
		case !strings.Contains(r.Header.Get("Accept"), "as=PartialObjectMetadata"):
			w.WriteHeader(http.StatusNotAcceptable)
		case r.URL.Path == "/api/v1/namespaces/ns/pods/flaky" && n < 3:
			w.WriteHeader(http.StatusServiceUnavailable)
		case r.URL.Path == "/api/v1/namespaces/ns/pods/flaky":
			_, _ = w.Write([]byte(`{"kind":"PartialObjectMetadata","metadata":{"name":"flaky","annotations":{"a":"b"}}}`))
		case r.URL.Path == "/api/v1/namespaces/ns/pods/forbidden":
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`pods "forbidden" is forbidden`))
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ann, err := cl.podAnnotations(ctx, "ns", "flaky")
	if err != nil || ann["a"] != "b" || calls.Load() != 3 {
		t.Errorf("flaky: %v %v after %d calls, want the annotations on the 3rd", ann, err, calls.Load())
	}
	calls.Store(10)
	if _, err := cl.podAnnotations(ctx, "ns", "gone"); err != errNotFound || calls.Load() != 11 {
		t.Errorf("404: %v after %d calls, want errNotFound at once", err, calls.Load()-10)
	}
	if _, err := cl.podAnnotations(ctx, "ns", "forbidden"); err == nil || !strings.Contains(err.Error(), "403") || calls.Load() != 12 {
		t.Errorf("403: %v, want an error at once", err)
	}
}

func TestPodAnnotationsGivesUp(t *testing.T) {
	_, cl := apiServer(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusInternalServerError) })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := cl.podAnnotations(ctx, "ns", "p")
	if err == nil || !strings.Contains(err.Error(), "gave up after") {
		t.Errorf("error %v, want it to give up when the timeout ends", err)
	}
}

func TestPodAnnotationsUntrustedServer(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	cl := &apiClient{server: srv.URL,
		http: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool()}}}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := cl.podAnnotations(ctx, "ns", "p")
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) || conns.Load() != 1 {
		t.Errorf("untrusted certificate: %v after %d connections, want a verification error on the first", err, conns.Load())
	}
}

func TestValidateKubeconfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, user string) string {
		p := filepath.Join(dir, name)
		kc := `apiVersion: v1
kind: Config
current-context: c
clusters: [{name: k, cluster: {server: "https://10.0.0.1:6443/", insecure-skip-tls-verify: true}}]
users: [{name: u, user: ` + user + `}]
contexts: [{name: c, context: {cluster: k, user: u}}]
`
		if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if server, err := ValidateKubeconfig(write("token.yaml", `{token: abc}`)); err != nil || server != "https://10.0.0.1:6443" {
		t.Errorf("token: %q, %v", server, err)
	}
	path := write("none.yaml", `{}`)
	if _, err := ValidateKubeconfig(path); err == nil || !strings.Contains(err.Error(), "no token, tokenFile or client certificate") ||
		!strings.Contains(err.Error(), path) {
		t.Errorf("no credentials: %v, want them missed, naming the file", err)
	}
	if _, err := ValidateKubeconfig(filepath.Join(dir, "absent")); err == nil {
		t.Error("a missing kubeconfig validated")
	}
}
