package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/contract"
)

// app serves "hello from <name>" over HTTP on a free loopback port.
func app(t *testing.T, name string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "hello from %s", name)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// startProxy runs `meshlet proxy` for proxyID in this process until the
// test ends; it returns once the proxy is ready.
func startProxy(t *testing.T, cl *capi.Client, proxyID string) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	ready := make(chan Config, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("proxy", proxyID)
	go func() {
		done <- Run(ctx, cl, Options{ProxyID: proxyID, Drain: time.Second, Registry: reg, Ready: func(c Config) { ready <- c }}, log)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy %s: %v", proxyID, err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("proxy %s stopped: %v", proxyID, err)
	case <-time.After(60 * time.Second):
		t.Fatalf("proxy %s not ready after 60 s", proxyID)
	}
	return reg
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// get sends one HTTP/1.0 request over a new connection to addr and
// returns everything the other side sent back, and how it ended.
func get(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: x\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// counter is a connection counter of the proxy's registry.
func counter(t *testing.T, reg *prometheus.Registry, dir, res string) float64 {
	t.Helper()
	return metric(t, reg, "meshlet_proxy_connections_total", map[string]string{"direction": dir, "result": res})
}

// metric is the value of the series of name with labels (0 when absent).
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// TestProxyThroughConsul: two proxies on real Consul agents carry a
// request from one app to the other over mTLS through an explicit
// upstream; intentions decide per connection; an unhealthy instance is not
// picked; a caller without a Consul certificate gets nothing.
func TestProxyThroughConsul(t *testing.T) {
	cl := consulAgents(t)
	serverPublic, upPort := freePort(t), freePort(t)
	server := register(t, cl, meshPod{name: "static-server", ip: "127.0.0.1", app: app(t, "static-server"), public: serverPublic})
	client := register(t, cl, meshPod{name: "static-client", ip: "127.0.0.1", app: app(t, "static-client"), public: freePort(t),
		upstreams: []contract.Upstream{{Name: "static-server", LocalPort: upPort}}})
	serverReg := startProxy(t, cl, server.Proxy.ID)
	clientReg := startProxy(t, cl, client.Proxy.ID)
	ready := server.Service.Check.CheckID // the check the node agent keeps in step with the pod's Ready condition
	upstream := net.JoinHostPort("127.0.0.1", strconv.Itoa(upPort))

	ok := func(what string) {
		t.Helper()
		got, err := get(upstream)
		if err != nil || !strings.HasSuffix(got, "hello from static-server") {
			t.Fatalf("%s: got %q, %v; want hello from static-server", what, got, err)
		}
	}
	ok("allowed by default")
	if n := counter(t, serverReg, dirInbound, resOK); n != 1 {
		t.Errorf("server proxy counted %v inbound connections, want 1", n)
	}

	if _, err := cl.Connect().IntentionUpsert(&capi.Intention{SourceName: "static-client", DestinationName: "static-server",
		Action: capi.IntentionActionDeny}, nil); err != nil {
		t.Fatal(err)
	}
	// The Consul agent learns intentions by a blocking query: the first
	// connection after it has them is denied.
	eventually(t, 10*time.Second, "the deny intention to apply", func() error {
		got, err := get(upstream)
		if err != nil || got != "" {
			return fmt.Errorf("got %q, %v; want an empty reply", got, err)
		}
		return nil
	})
	if n := counter(t, serverReg, dirInbound, resDenied); n < 1 {
		t.Errorf("server proxy counted %v denied connections, want ≥ 1", n)
	}

	if _, err := cl.Connect().IntentionDeleteExact("static-client", "static-server", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the intention's deletion to apply", func() error {
		got, err := get(upstream)
		if err != nil || !strings.HasSuffix(got, "hello from static-server") {
			return fmt.Errorf("got %q, %v", got, err)
		}
		return nil
	})

	// Unready: the service's check critical, the proxy's alias follows,
	// and the client proxy has no instance to pick.
	if err := cl.Agent().UpdateTTL(ready, "unready", capi.HealthCritical); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the unhealthy instance to be dropped", func() error {
		got, err := get(upstream)
		if !errors.Is(err, syscall.ECONNRESET) {
			return fmt.Errorf("got %q, %v; want a reset", got, err)
		}
		return nil
	})
	if n := counter(t, clientReg, dirUpstream, resNoHealthy); n < 1 {
		t.Errorf("client proxy counted %v no_healthy connections, want ≥ 1", n)
	}
	if err := cl.Agent().UpdateTTL(ready, "ready", capi.HealthPassing); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the instance back", func() error {
		_, err := get(upstream)
		return err
	})
	ok("healthy again")

	// A CA rotation (the built-in CA with a new key type: a new root, the
	// old one cross-signed): both proxies load a new leaf and roots with
	// no restart, and keep serving.
	leafLoads := func(reg *prometheus.Registry) float64 {
		return metric(t, reg, "meshlet_proxy_identity_loads_total", map[string]string{"what": "leaf"})
	}
	serverLeaves, clientLeaves := leafLoads(serverReg), leafLoads(clientReg)
	roots, _, err := cl.Connect().CARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Connect().CASetConfig(&capi.CAConfig{Provider: "consul",
		Config: map[string]any{"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "both proxies to load a leaf of the new root", func() error {
		now, _, err := cl.Connect().CARoots(nil)
		if err != nil || now.ActiveRootID == roots.ActiveRootID {
			return fmt.Errorf("active root still %s (%v)", roots.ActiveRootID, err)
		}
		if s, c := leafLoads(serverReg), leafLoads(clientReg); s <= serverLeaves || c <= clientLeaves {
			return fmt.Errorf("leaves loaded: server %v (was %v), client %v (was %v)", s, serverLeaves, c, clientLeaves)
		}
		return nil
	})
	ok("after a CA rotation")
	if exp := metric(t, serverReg, "meshlet_proxy_leaf_expiry_timestamp_seconds", nil); exp < float64(time.Now().Unix()) {
		t.Errorf("leaf expiry %v is not in the future", exp)
	}

	// No client certificate: the handshake fails and the app sees nothing.
	before := counter(t, serverReg, dirInbound, resOK)
	if got, err := get(net.JoinHostPort("127.0.0.1", strconv.Itoa(serverPublic))); strings.Contains(got, "hello") {
		t.Errorf("plain connection to the public listener got %q, %v", got, err)
	}
	if n := counter(t, serverReg, dirInbound, resOK); n != before {
		t.Errorf("plain connection reached the app")
	}
	if n := counter(t, serverReg, dirInbound, resBadTLS); n < 1 {
		t.Errorf("server proxy counted %v tls_failed connections, want ≥ 1", n)
	}

	// A port check (kubelet's TCP probe, meshlet-proxy wait): connected
	// and closed without a byte, counted apart from failed handshakes.
	bad := counter(t, serverReg, dirInbound, resBadTLS)
	if err := waitListening(context.Background(), net.JoinHostPort("127.0.0.1", strconv.Itoa(serverPublic))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the port check to be counted", func() error {
		if n := counter(t, serverReg, dirInbound, resPortCheck); n != 1 {
			return fmt.Errorf("%v port checks counted, want 1", n)
		}
		return nil
	})
	if n := counter(t, serverReg, dirInbound, resBadTLS); n != bad {
		t.Errorf("a port check counted as a failed handshake (%v, was %v)", n, bad)
	}
}
