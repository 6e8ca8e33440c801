package dataplane

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/meshlet/meshlet/contract"
)

// The webhook runs `meshlet-proxy wait` as the postStart hook of a sidecar
// that is a regular container: kubelet starts the pod's next container
// only once the hook returns, so the app starts with its proxy serving
// (a native sidecar has its startup probe for that).

// waitPoll is how often wait dials: every poll missed is start time of
// the pod, and a dial on the pod's loopback costs next to nothing.
const waitPoll = 20 * time.Millisecond

// WaitMain is `meshlet proxy wait`: it returns nil once the proxy's
// public listener answers, an error naming the address at the timeout
// (nil with -continue-on-timeout).
// The public listener opens after every other listener of the proxy (Run),
// so its answering means the app's outbound and upstream listeners are
// bound too.
func WaitMain(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("meshlet proxy wait", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", fmt.Sprintf("127.0.0.1:%d", contract.ProxyInboundPort), "the proxy's public listener, as reached from inside the pod")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long (kubelet then restarts the sidecar)")
	file := fs.String("file", "", "wait for this file to exist and hold something, instead of the listener (data plane envoy's login sidecar's startup probe: Envoy's token file)")
	cont := fs.Bool("continue-on-timeout", false, "at the timeout, say so and exit 0: kubelet then starts the app rather than kill the sidecar, which may be about to serve")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case *timeout <= 0:
		return fmt.Errorf("-timeout %s: expected a duration > 0", *timeout)
	}
	if _, _, err := net.SplitHostPort(*addr); err != nil {
		return fmt.Errorf("-addr %q: expected host:port: %w", *addr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if *file != "" {
		return waitFile(ctx, *file)
	}
	err := waitListening(ctx, *addr)
	if err != nil && *cont && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		fmt.Fprintf(stderr, "meshlet proxy wait: %v; letting the app start without it\n", err)
		return nil
	}
	return err
}

// waitListening dials addr until a connection succeeds or ctx ends.
func waitListening(ctx context.Context, addr string) error {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c.Close()
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("the proxy's public listener %s did not answer in time: %w", addr, err)
			}
			return ctx.Err()
		case <-time.After(waitPoll):
		}
	}
}

// waitFile polls path until it is a file that holds something or ctx ends.
func waitFile(ctx context.Context, path string) error {
	for {
		fi, err := os.Stat(path)
		if err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("%s is empty or not a regular file", path)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", path, err)
		case <-time.After(waitPoll):
		}
	}
}
