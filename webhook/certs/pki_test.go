package certs

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const validity = 720 * time.Hour

func TestProblem(t *testing.T) {
	names := dnsNames("wh", "ns")
	fresh, err := mint(names, t0, validity, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := mint(dnsNames("other", "ns"), t0, validity, nil)
	if err != nil {
		t.Fatal(err)
	}
	// fresh's leaf with other's bundle: a pair whose CA is not in ca.crt.
	foreign, err := parseMaterial(map[string][]byte{keyCert: fresh.certPEM, keyKey: fresh.keyPEM, keyCA: other.caPEM})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mat  *material
		now  time.Time
		want string // substring of the problem; "" = none
	}{
		{"fresh", fresh, t0, ""},
		{"minted by a replica whose clock is 1m ahead", fresh, t0.Add(-time.Minute - backdate), ""},
		{"just before 2/3 of its life", fresh, renewAt(fresh.leaf()).Add(-time.Second), ""},
		{"at 2/3 of its life", fresh, renewAt(fresh.leaf()), "due for renewal"},
		{"expired", fresh, t0.Add(validity + time.Hour), "due for renewal"},
		{"other service's names", other, t0, "lacks SAN wh"},
		{"leaf not signed by the bundle", foreign, t0, "does not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.mat.problem(names, tc.now)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("problem = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseMaterial(t *testing.T) {
	good, err := mint(dnsNames("wh", "ns"), t0, validity, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := mint(dnsNames("wh", "ns"), t0, validity, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(map[string][]byte)
		want string // substring of the error; "" = parses
	}{
		{"good", func(map[string][]byte) {}, ""},
		{"no ca.crt", func(d map[string][]byte) { delete(d, keyCA) }, "key ca.crt is missing"},
		{"empty tls.key", func(d map[string][]byte) { d[keyKey] = nil }, "key tls.key is missing"},
		{"key of another pair", func(d map[string][]byte) { d[keyKey] = other.keyPEM }, "private key does not match"},
		{"garbage bundle", func(d map[string][]byte) { d[keyCA] = []byte("junk") }, "ca.crt: no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := good.data()
			tc.edit(d)
			_, err := parseMaterial(d)
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// verify checks that the served leaf chains to bundle for <svc>.<ns>.svc.
func verify(t *testing.T, leaf *x509.Certificate, bundle []byte, at time.Time) {
	t.Helper()
	cas, err := parseCerts(bundle)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "wh.ns.svc", Roots: pool, CurrentTime: at}); err != nil {
		t.Errorf("leaf %s does not verify against the bundle: %v", leaf.SerialNumber.Text(16), err)
	}
}

func served(t *testing.T, src Source) *x509.Certificate {
	t.Helper()
	c, err := src.GetCertificate(&tls.ClientHelloInfo{ServerName: "wh.ns.svc"})
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf
}

// waitFor polls cond every 5ms for up to 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// metric is the value of the series name{result=result} (result "" for
// the gauge) in reg.
func metric(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if result != "" && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != result) {
				continue
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no series %s{result=%q}", name, result)
	return 0
}

// testLog shows the source's log with the test's output.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}
