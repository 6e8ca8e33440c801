package dataplane

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/contract"
)

// TestWaitMain: `meshlet proxy wait` returns once the address answers,
// fails naming it at the timeout, and refuses bad flags.
func TestWaitMain(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	opened := make(chan time.Time, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		opened <- time.Now()
		t.Cleanup(func() { ln.Close() })
	}()
	if err := WaitMain(context.Background(), []string{"-addr", addr, "-timeout", "10s"}, &bytes.Buffer{}); err != nil {
		t.Fatalf("wait for a listener opened after 300 ms: %v", err)
	}
	select {
	case <-opened:
	default:
		t.Fatal("wait returned before the listener opened")
	}

	closed := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	var said bytes.Buffer
	if err := Main(context.Background(), []string{"wait", "-addr", closed, "-timeout", "200ms", "-continue-on-timeout"}, &said); err != nil ||
		!strings.Contains(said.String(), "did not answer in time") || !strings.Contains(said.String(), "letting the app start without it") {
		t.Errorf("wait -continue-on-timeout: %v, said %q; want nil, saying it gave up", err, said.String())
	}
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"-addr", closed, "-timeout", "200ms"}, "the proxy's public listener " + closed + " did not answer in time"},
		{[]string{"-timeout", "0s"}, "-timeout 0s: expected a duration > 0"},
		{[]string{"-addr", "20000"}, `-addr "20000": expected host:port`},
		{[]string{"extra"}, `unexpected arguments ["extra"]`},
	} {
		err := Main(context.Background(), append([]string{"wait"}, tc.args...), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("meshlet proxy wait %q: %v, want %q", tc.args, err, tc.wantErr)
		}
	}
}

// TestPublicListenerLast: the proxy binds its public listener after the
// others, so `meshlet proxy wait` and the startup probe, which watch it,
// let the app start only with its upstream and outbound listeners bound.
// With both an upstream's port and the public port taken, Run must stop
// at the upstream.
func TestPublicListenerLast(t *testing.T) {
	cl := consulAgents(t)
	public, upPort := freePort(t), freePort(t)
	regs := register(t, cl, meshPod{name: "order", ip: "127.0.0.1", public: public,
		upstreams: []contract.Upstream{{Name: "static-server", LocalPort: upPort}}})
	for _, port := range []int{public, upPort} {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := Run(ctx, cl, Options{ProxyID: regs.Proxy.ID}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "upstream listener on 127.0.0.1:"+strconv.Itoa(upPort)) {
		t.Fatalf("Run: %v, want it to fail binding the upstream before the public listener", err)
	}
}
