package dataplane

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"github.com/meshlet/meshlet/test/netnstest"
)

// proxyArgsEnv, in a subprocess started by netnstest.StartAs, holds the
// flags of a `meshlet proxy` it runs instead of the tests: the proxy as
// its own process, UID 5995, inside a pod's netns.
const proxyArgsEnv = "MESHLET_TEST_PROXY_ARGS"

func TestMain(m *testing.M) {
	netnstest.HelperMain()
	if args := os.Getenv(proxyArgsEnv); args != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		err := Main(ctx, strings.Fields(args), os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "meshlet proxy:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	netnstest.Cleanup()
	os.Exit(code)
}
