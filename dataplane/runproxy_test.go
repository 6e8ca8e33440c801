package dataplane

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"testing"
	"time"
)

// runProxy runs `meshlet proxy` with args in this process until stop or
// the test's end. It returns the proxy's logs, a channel that receives
// Main's result should the proxy stop by itself, and stop, which ends the
// proxy and returns that result.
func runProxy(t *testing.T, args []string) (logs *syncBuffer, done <-chan error, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs = &syncBuffer{}
	end := make(chan error, 1)
	go func() { end <- Main(ctx, args, logs) }()
	var once sync.Once
	var result error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-end:
			case <-time.After(30 * time.Second):
				t.Error("the proxy did not stop")
			}
		})
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return logs, end, stop
}

// waitServing waits until the proxy answers /ready on metrics, failing
// the test with its logs if it stops first.
func waitServing(t *testing.T, what, metrics string, logs *syncBuffer, done <-chan error) {
	t.Helper()
	eventually(t, 30*time.Second, what, func() error {
		select {
		case err := <-done:
			t.Fatalf("the proxy stopped: %v\n%s", err, logs.String())
		default:
		}
		resp, err := http.Get("http://" + metrics + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
}

// syncBuffer collects a proxy's logs while the test reads them.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
