package certs

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func pair(t *testing.T) *material {
	t.Helper()
	m, err := mint(dnsNames("wh", "ns"), time.Now(), validity, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writePlain writes the pair in place, as a plain file-writing issuer does.
func writePlain(t *testing.T, dir string, m *material) {
	writeFile(t, filepath.Join(dir, "tls.crt"), m.certPEM)
	writeFile(t, filepath.Join(dir, "tls.key"), m.keyPEM)
}

// writeSecretVolume updates dir the way kubelet updates a Secret volume:
// a new timestamped directory, an atomic rename of the ..data symlink to
// it, then the old directory removed. tls.crt and tls.key are symlinks
// through ..data and never change themselves.
func writeSecretVolume(t *testing.T, dir string, m *material) {
	t.Helper()
	ts := "..2026_" + m.leaf().SerialNumber.Text(16)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(dir, ts), 0o700))
	writeFile(t, filepath.Join(dir, ts, "tls.crt"), m.certPEM)
	writeFile(t, filepath.Join(dir, ts, "tls.key"), m.keyPEM)
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	must(os.Symlink(ts, filepath.Join(dir, "..data_tmp")))
	must(os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	if old == "" {
		must(os.Symlink("..data/tls.crt", filepath.Join(dir, "tls.crt")))
		must(os.Symlink("..data/tls.key", filepath.Join(dir, "tls.key")))
	} else {
		must(os.RemoveAll(filepath.Join(dir, old)))
	}
}

func TestNewFilesErrors(t *testing.T) {
	a, b := pair(t), pair(t)
	for _, tc := range []struct {
		name      string
		cert, key []byte // nil: the file does not exist
		want      []string
	}{
		{"key of another pair", a.certPEM, b.keyPEM, []string{"tls.key", "tls.crt", "private key does not match"}},
		{"no certificate file", nil, a.keyPEM, []string{"tls.crt", "no such file"}},
		{"no key file", a.certPEM, nil, []string{"tls.key", "no such file"}},
		{"certificate not PEM", []byte("junk"), a.keyPEM, []string{"tls.crt", "no PEM certificate"}},
		{"key not PEM", a.certPEM, []byte("junk"), []string{"tls.key", "failed to find any PEM data"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.cert != nil {
				writeFile(t, filepath.Join(dir, "tls.crt"), tc.cert)
			}
			if tc.key != nil {
				writeFile(t, filepath.Join(dir, "tls.key"), tc.key)
			}
			_, err := NewFiles(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), testLog(t), nil)
			if err == nil {
				t.Fatal("NewFiles succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestFilesReload(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layout func(*testing.T, string, *material)
		update func(t *testing.T, dir string, next *material)
		// timerOnly: events are ignored, so only the resync timer can
		// pick the change up (the safety net for a missed event).
		timerOnly bool
		wantNew   bool
	}{
		{name: "files rewritten", layout: writePlain, update: writePlain, wantNew: true},
		{name: "secret volume ..data swap", layout: writeSecretVolume, update: writeSecretVolume, wantNew: true},
		{name: "missed event, resync timer", layout: writePlain, update: writePlain, timerOnly: true, wantNew: true},
		{name: "bad new pair keeps the old", layout: writePlain, wantNew: false,
			update: func(t *testing.T, dir string, next *material) {
				writeFile(t, filepath.Join(dir, "tls.crt"), next.certPEM)
				writeFile(t, filepath.Join(dir, "tls.key"), pair(t).keyPEM) // not next's key
			}},
		{name: "bad new secret volume keeps the old", layout: writeSecretVolume, wantNew: false,
			update: func(t *testing.T, dir string, next *material) {
				next.certPEM = []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
				writeSecretVolume(t, dir, next)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			first, next := pair(t), pair(t)
			tc.layout(t, dir, first)
			reg := prometheus.NewRegistry()
			f, err := NewFiles(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), testLog(t), reg)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Ready(); err != nil {
				t.Fatalf("Ready after NewFiles: %v", err)
			}
			if !served(t, f).Equal(first.leaf()) {
				t.Fatal("NewFiles does not serve the pair on disk")
			}
			if tc.timerOnly {
				f.resync, f.debounce = 20*time.Millisecond, time.Hour
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error)
			go func() { done <- f.Run(ctx) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run returned %v, want nil", err)
				}
			})
			// Let Run's watch start: a change before it would be missed
			// (and caught by the one-minute timer only).
			waitFor(t, "the watch", func() bool { return f.watching.Load() })

			if tc.wantNew {
				// Twice: a watch that dies with the first update (one on
				// the file a removed ..data target held) misses the second.
				for i, next := range []*material{next, pair(t)} {
					tc.update(t, dir, next)
					waitFor(t, "the new certificate", func() bool { return served(t, f).Equal(next.leaf()) })
					if got, want := metric(t, reg, "meshlet_webhook_certificate_reloads_total", "ok"), float64(i+2); got != want {
						t.Errorf("reloads ok = %v, want %v (load, reloads)", got, want)
					}
					if got := metric(t, reg, "meshlet_webhook_certificate_expiry_timestamp_seconds", ""); got != float64(next.leaf().NotAfter.Unix()) {
						t.Errorf("expiry gauge = %v, want the new NotAfter %d", got, next.leaf().NotAfter.Unix())
					}
				}
				return
			}
			tc.update(t, dir, next)
			waitFor(t, "a reload error", func() bool {
				return metric(t, reg, "meshlet_webhook_certificate_reloads_total", "error") == 1
			})
			if got := served(t, f); !got.Equal(first.leaf()) {
				t.Errorf("serves serial %s after a bad update, want the old %s", got.SerialNumber.Text(16), first.leaf().SerialNumber.Text(16))
			}
			if err := f.Ready(); err != nil {
				t.Errorf("Ready after a bad update: %v (the old pair still serves)", err)
			}
		})
	}
}

// TestFilesReloadReportsOnce: the resync timer re-reading a broken pair
// does not count (and log) the same failure every minute.
func TestFilesReloadReportsOnce(t *testing.T) {
	dir := t.TempDir()
	first, next := pair(t), pair(t)
	writePlain(t, dir, first)
	reg := prometheus.NewRegistry()
	f, err := NewFiles(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), testLog(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "tls.key"), next.keyPEM) // first's cert, next's key
	for range 3 {
		f.reload()
	}
	if got := metric(t, reg, "meshlet_webhook_certificate_reloads_total", "error"); got != 1 {
		t.Errorf("reloads error = %v after 3 reloads of one broken pair, want 1", got)
	}
	writeFile(t, filepath.Join(dir, "tls.crt"), next.certPEM)
	f.reload()
	f.reload()
	if got := metric(t, reg, "meshlet_webhook_certificate_reloads_total", "ok"); got != 2 {
		t.Errorf("reloads ok = %v, want 2 (load, one reload of the fixed pair)", got)
	}
	if !served(t, f).Equal(next.leaf()) {
		t.Error("the fixed pair is not served")
	}
}
