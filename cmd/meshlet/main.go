// Command meshlet is meshlet's node-side and cluster-side binary:
// `meshlet webhook` is the mutating admission webhook, `meshlet agent` the
// node agent, `meshlet proxy` the L4 sidecar proxy, `meshlet reaper` the
// token reaper.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshlet/meshlet/daemon/agent"
	"github.com/meshlet/meshlet/dataplane"
	"github.com/meshlet/meshlet/reaper"
	"github.com/meshlet/meshlet/webhook/server"
)

var version = "dev"

const usage = `usage: meshlet <command> [flags]

commands:
  agent     the node agent, a DaemonSet (meshlet agent -h for its flags)
  proxy     the L4 sidecar proxy, data plane "meshlet" (meshlet proxy -h for its flags)
  reaper    the token reaper: deletes Consul login tokens no live pod holds (meshlet reaper -h for its flags)
  webhook   the mutating admission webhook (meshlet webhook -h for its flags)
  version   print the version`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch os.Args[1] {
	case "version", "--version":
		fmt.Println("meshlet", version)
		return
	case "agent":
		err = agent.Main(ctx, os.Args[2:], os.Stderr)
	case "proxy":
		err = dataplane.Main(ctx, os.Args[2:], os.Stderr)
	case "reaper":
		err = reaper.Main(ctx, os.Args[2:], os.Stderr)
	case "webhook":
		err = server.Main(ctx, os.Args[2:], os.Stderr)
	default:
		fmt.Fprintf(os.Stderr, "meshlet: unknown command %q\n%s\n", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "meshlet %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
