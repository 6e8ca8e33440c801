// Command meshlet-proxy is `meshlet proxy` on its own: the L4 sidecar the
// webhook injects for data plane "meshlet". One runs in every meshed pod,
// so it is built without the agent's and the webhook's code, whose
// initialisation would otherwise be resident in each of them
// (docs/benchmarks.md has both binaries' memory). Its flags are `meshlet
// proxy`'s.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshlet/meshlet/dataplane"
)

var version = "dev"

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Println("meshlet-proxy", version)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := dataplane.Main(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "meshlet-proxy: %v\n", err)
		os.Exit(1)
	}
}
