package dataplane

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestLinger: after SIGTERM a regular-container sidecar waits for the app,
// on a real loopback port.
func TestLinger(t *testing.T) {
	listening := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln.Addr().String()
	}
	refusing := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	for _, tc := range []struct {
		name     string
		app      func(t *testing.T) string
		openFor  time.Duration // a connection stays open this long
		want     string
		min, max time.Duration
	}{
		{"app still listening: until the limit", listening, 0, lingerTimeout, time.Second, 3 * time.Second},
		{"app gone, nothing open", func(*testing.T) string { return refusing }, 0, lingerAppGone, 0, 500 * time.Millisecond},
		{"app gone, a request still calling out", func(*testing.T) string { return refusing }, 400 * time.Millisecond, lingerAppGone, 400 * time.Millisecond, 2 * time.Second},
		{"no app port, nothing open", func(*testing.T) string { return "" }, 0, lingerIdle, 0, 500 * time.Millisecond},
		{"no app port, a connection open", func(*testing.T) string { return "" }, 400 * time.Millisecond, lingerIdle, 400 * time.Millisecond, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := tc.app(t)
			var open atomic.Int32
			if tc.openFor > 0 {
				open.Store(1)
				time.AfterFunc(tc.openFor, func() { open.Store(0) })
			}
			start := time.Now()
			got := linger(time.Second, app, func() int { return int(open.Load()) })
			took := time.Since(start)
			if got != tc.want || took < tc.min || took > tc.max {
				t.Fatalf("linger = %s after %v, want %s after %v-%v", got, took, tc.want, tc.min, tc.max)
			}
		})
	}
}

// TestLingerKeepsServing: with -linger, the proxy keeps its listeners
// after SIGTERM while the app listens, and stops once it has exited; the
// proxy of a native sidecar (no linger) stops at once.
func TestLingerKeepsServing(t *testing.T) {
	cl := consulAgents(t)
	for _, tc := range []struct {
		name   string
		linger time.Duration
	}{{"regular container", 30 * time.Second}, {"native sidecar", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			appLn, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer appLn.Close()
			public := freePort(t)
			regs := register(t, cl, meshPod{name: "linger-" + strconv.FormatBool(tc.linger > 0), ip: "127.0.0.1",
				app: appLn.Addr().(*net.TCPAddr).Port, public: public})
			ctx, cancel := context.WithCancel(context.Background())
			ready, done := make(chan Config, 1), make(chan error, 1)
			go func() {
				done <- Run(ctx, cl, Options{ProxyID: regs.Proxy.ID, Drain: time.Second, Linger: tc.linger,
					Ready: func(c Config) { ready <- c }}, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
			}()
			select {
			case <-ready:
			case err := <-done:
				t.Fatalf("proxy stopped: %v", err)
			case <-time.After(60 * time.Second):
				t.Fatal("proxy not ready after 60 s")
			}
			publicAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(public))
			// stops fails t unless Run returns nil within 5 s.
			stops := func(after string) {
				t.Helper()
				select {
				case err := <-done:
					if err != nil {
						t.Fatal(err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("proxy still runs 5 s after %s", after)
				}
			}
			cancel() // SIGTERM
			time.Sleep(500 * time.Millisecond)
			if tc.linger == 0 {
				stops("SIGTERM, without -linger")
				if answers(publicAddr) {
					t.Fatal("a proxy without -linger still accepts after SIGTERM")
				}
				return
			}
			if !answers(publicAddr) {
				t.Fatal("the public listener closed 500 ms after SIGTERM while the app still listens")
			}
			select {
			case err := <-done:
				t.Fatalf("proxy stopped while the app still listens: %v", err)
			default:
			}
			appLn.Close() // the app exits
			stops("the app exited")
		})
	}
}

// TestMainFlags: bad flags of `meshlet proxy` name the flag.
func TestMainFlags(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"-proxy-id", "p", "-linger", "-1s"}, "-linger -1s: expected a duration ≥ 0"},
		{[]string{"-proxy-id", "p", "-drain", "-1s"}, "-drain -1s: expected a duration ≥ 0"},
		{[]string{"-proxy-id", ""}, "-proxy-id is empty"},
		{[]string{"-proxy-id", "p", "-acl-auth-method", "k8s", "-token-file", "/t"}, "-acl-auth-method k8s and -token-file /t exclude each other"},
		{[]string{"-proxy-id", "p", "-acl-auth-method", "k8s", "-acl-bearer-token-file", ""}, "-acl-auth-method k8s needs -acl-bearer-token-file"},
		{[]string{"-proxy-id", "p", "-node-agent-addr", "10.0.0.1"}, `-node-agent-addr "10.0.0.1": expected host:port`},
		{[]string{"-proxy-id", "p", "-acl-auth-method-namespace", "default", "-consul-namespace", "team-a"}, "-acl-auth-method-namespace default without -acl-auth-method"},
		{[]string{"-proxy-id", "p", "-acl-auth-method", "k8s", "-acl-auth-method-namespace", "default"}, "-acl-auth-method-namespace default without -consul-namespace"},
	} {
		err := Main(context.Background(), tc.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("meshlet proxy %q: %v, want %q", tc.args, err, tc.wantErr)
		}
	}
}
