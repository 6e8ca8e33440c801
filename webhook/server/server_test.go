package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"

	"github.com/meshlet/meshlet/contract"
)

// staticCert is a CertSource with one self-signed certificate for
// 127.0.0.1, ready when told.
type staticCert struct {
	cert  tls.Certificate
	pool  *x509.CertPool
	ready atomic.Bool
}

func newStaticCert(t testing.TB) *staticCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "webhook"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	s := &staticCert{cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool: x509.NewCertPool()}
	s.pool.AddCert(leaf)
	s.ready.Store(true)
	return s
}

func (s *staticCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return &s.cert, nil
}
func (s *staticCert) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (s *staticCert) Ready() error {
	if !s.ready.Load() {
		return errors.New("no certificate yet")
	}
	return nil
}

// running is a Server serving on a loopback port.
type running struct {
	s      *Server
	base   string // https://127.0.0.1:<port>
	cancel context.CancelFunc
	done   chan error // Serve's result
}

// stop signals the server and returns Serve's error.
func (r running) stop() error { r.cancel(); return <-r.done }

// serve starts a Server with the test handler on a loopback port.
func serve(t testing.TB, certs *staticCert, shutdownDelay time.Duration) running {
	t.Helper()
	h, reg := newTestHandler()
	return serveHandler(t, certs, h, reg, shutdownDelay)
}

// serveHandler starts a Server around h on a loopback port.
func serveHandler(t testing.TB, certs *staticCert, h *Handler, reg *prometheus.Registry, shutdownDelay time.Duration) running {
	t.Helper()
	s := &Server{Handler: h, Certs: certs, Registry: reg, Log: h.Log, ShutdownDelay: shutdownDelay, ShutdownGrace: 5 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := running{s: s, base: "https://" + ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Serve(ctx, ln) }()
	return r
}

func client(pool *x509.CertPool, maxVersion uint16) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: maxVersion}}}
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServerHTTPS(t *testing.T) {
	certs := newStaticCert(t)
	srv := serve(t, certs, 0)
	base := srv.base
	c := client(certs.pool, 0)

	if code, _ := get(t, c, base+PathHealthz); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	if code, _ := get(t, c, base+PathReadyz); code != 200 {
		t.Fatalf("/readyz with a certificate: %d", code)
	}
	certs.ready.Store(false)
	if code, body := get(t, c, base+PathReadyz); code != 503 || !strings.Contains(body, "no certificate yet") {
		t.Fatalf("/readyz without a certificate: %d %q, want 503 with the reason", code, body)
	}
	certs.ready.Store(true)

	body := reviewBody(t, podKind, admissionv1.Create, testPod(map[string]string{contract.Inject: "true"}))
	resp, err := c.Post(base+PathMutate, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(out), `"patchType":"JSONPatch"`) {
		t.Fatalf("POST /mutate over HTTPS: %d %s", resp.StatusCode, out)
	}
	if resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
		t.Fatalf("TLS state %+v", resp.TLS)
	}
	if code, m := get(t, c, base+PathMetrics); code != 200 || !strings.Contains(m, `meshlet_webhook_reviews_total{result="injected"} 1`) {
		t.Fatalf("/metrics: %d, want the injected review counted:\n%s", code, m)
	}

	// TLS 1.1 and older are refused.
	if _, err := client(certs.pool, tls.VersionTLS11).Get(base + PathHealthz); err == nil {
		t.Fatal("a TLS 1.1 client was served")
	}
	// Plain HTTP is not served.
	if resp, err := http.Get("http" + strings.TrimPrefix(base, "https") + PathHealthz); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP was served")
	}
	if err := srv.stop(); err != nil {
		t.Fatalf("Serve after stop: %v", err)
	}
	if _, err := c.Get(base + PathHealthz); err == nil {
		t.Fatal("still serving after stop")
	}
}

// After the stop signal the server reports unready while it still serves,
// so the API server stops choosing it before the port closes, and it asks
// HTTP/1.1 clients to close each connection after its answer, so that its
// drain does not close one under a client's next request.
func TestServerUnreadyWhileStopping(t *testing.T) {
	certs := newStaticCert(t)
	srv := serve(t, certs, 2*time.Second)
	s, base := srv.s, srv.base
	c := client(certs.pool, 0)
	if code, _ := get(t, c, base+PathReadyz); code != 200 {
		t.Fatalf("/readyz before stop: %d", code)
	}
	connClose := func() bool {
		t.Helper()
		resp, err := c.Get(base + PathHealthz)
		if err != nil {
			t.Fatalf("GET %s: %v", PathHealthz, err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 1 {
			t.Fatalf("the test's client spoke %s, want HTTP/1.1", resp.Proto)
		}
		return resp.Close
	}
	if connClose() {
		t.Fatal("Connection: close before the stop signal")
	}
	srv.cancel()
	deadline := time.Now().Add(time.Second)
	for !s.stopping.Load() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if code, body := get(t, c, base+PathReadyz); code != 503 || !strings.Contains(body, "shutting down") {
		t.Fatalf("/readyz while stopping: %d %q, want 503", code, body)
	}
	if !connClose() {
		t.Error("while stopping, an answer without Connection: close")
	}
	if err := <-srv.done; err != nil {
		t.Fatal(err)
	}
}
