package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// Files serves a certificate and key read from disk (cert-manager or any
// issuer writing a Secret that the pod mounts) and reloads them when they
// change.
type Files struct {
	certFile, keyFile string
	log               *slog.Logger
	m                 *metrics
	// resync re-reads the files even without an event: the safety net for
	// a missed or coalesced one. debounce lets a burst of events (a rewrite
	// is several writes; a Secret update several renames) settle so that
	// a half-written pair is not loaded.
	resync, debounce time.Duration

	cert     atomic.Pointer[tls.Certificate]
	watching atomic.Bool // Run has set up its watch (tests wait for it)
	// Owned by Run: the bytes last served and last refused, so that an
	// unchanged pair is not reloaded and a broken one is reported once.
	served, refused []byte
}

// NewFiles loads the pair; an unreadable, unparsable or mismatched pair is
// an error naming the file.
func NewFiles(certFile, keyFile string, log *slog.Logger, reg prometheus.Registerer) (*Files, error) {
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	f := &Files{
		certFile: certFile, keyFile: keyFile,
		log:    orDefault(log).With("cert", certFile, "key", keyFile),
		m:      m,
		resync: time.Minute, debounce: 100 * time.Millisecond,
	}
	raw, cert, err := f.load()
	if err != nil {
		m.failed()
		return nil, err
	}
	f.serve(raw, cert)
	return f, nil
}

// GetCertificate implements tls.Config.GetCertificate.
func (f *Files) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := f.cert.Load(); c != nil {
		return c, nil
	}
	return nil, errNoCertificate
}

// Ready is nil while the served certificate has not expired: an expired
// one means the issuer stopped renewing, which the probe should show.
func (f *Files) Ready() error {
	c := f.cert.Load()
	if c == nil {
		return errNoCertificate
	}
	if now := time.Now(); now.After(c.Leaf.NotAfter) {
		return fmt.Errorf("serving certificate %s expired at %s", f.certFile, c.Leaf.NotAfter.Format(time.RFC3339))
	}
	return nil
}

// Run reloads the pair on changes until ctx ends.
//
// It watches the directories, not the files: a Kubernetes Secret volume
// updates by swapping its ..data symlink, which never touches the inode a
// watch on tls.crt holds. A plain rewrite shows up in the directory too.
func (f *Files) Run(ctx context.Context) error {
	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	if w, err := f.watch(); err != nil {
		// The timer still picks up changes, within resync.
		f.log.Error("cannot watch the certificate directories; re-reading every "+f.resync.String(), "err", err)
	} else {
		defer w.Close()
		events, watchErrs = w.Events, w.Errors
	}
	f.watching.Store(true)
	tick := time.NewTicker(f.resync)
	defer tick.Stop()
	settle := time.NewTimer(0)
	<-settle.C
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-events:
			f.log.Debug("certificate directory changed", "event", ev.String())
			settle.Reset(f.debounce)
		case err := <-watchErrs:
			f.log.Warn("watching the certificate directories", "err", err)
		case <-settle.C:
			f.reload()
		case <-tick.C:
			f.reload()
		}
	}
}

func (f *Files) watch() (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("new watcher: %w", err)
	}
	for _, dir := range []string{filepath.Dir(f.certFile), filepath.Dir(f.keyFile)} {
		if err := w.Add(dir); err != nil {
			w.Close()
			return nil, fmt.Errorf("watch %s: %w", dir, err)
		}
	}
	return w, nil
}

// reload serves the pair on disk if it changed and loads; a pair that
// does not load leaves the old one serving.
func (f *Files) reload() {
	raw, cert, err := f.load()
	switch {
	case err != nil && bytes.Equal(raw, f.refused):
		// Already reported; the resync timer must not repeat it every minute.
	case err != nil:
		f.refused = raw
		f.m.failed()
		f.log.Error("new serving certificate does not load; still serving the previous one", "err", err)
	case !bytes.Equal(raw, f.served):
		f.refused = nil
		f.serve(raw, cert)
	}
}

func (f *Files) serve(raw []byte, cert *tls.Certificate) {
	f.served = raw
	f.cert.Store(cert)
	f.m.served(cert.Leaf)
	f.log.Info("serving certificate loaded", "serial", cert.Leaf.SerialNumber.Text(16),
		"notAfter", cert.Leaf.NotAfter.Format(time.RFC3339))
}

// load reads and checks the pair. raw (both files' bytes, also on error
// when they could be read) identifies what was tried.
func (f *Files) load() (raw []byte, _ *tls.Certificate, _ error) {
	certPEM, err := os.ReadFile(f.certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("read serving certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(f.keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("read serving key: %w", err)
	}
	raw = append(append(certPEM, 0), keyPEM...)
	if _, err := parseCerts(certPEM); err != nil {
		return raw, nil, fmt.Errorf("serving certificate %s: %w", f.certFile, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return raw, nil, fmt.Errorf("serving key %s for certificate %s: %w", f.keyFile, f.certFile, err)
	}
	if pair.Leaf == nil {
		return raw, nil, errors.New("serving certificate " + f.certFile + ": no leaf parsed")
	}
	return raw, &pair, nil
}
