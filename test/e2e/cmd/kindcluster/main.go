// Command kindcluster builds meshlet's offline kind node image and boots
// and removes the kind cluster on it (make kind-up / make kind-down).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/meshlet/meshlet/test/e2e/kind/kindcluster"
	"github.com/meshlet/meshlet/test/e2e/kind/nodeimage"
)

const usage = "usage: kindcluster image|up|down   (run from the repository root)"

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	root, err := filepath.Abs(".")
	if err == nil {
		_, err = os.Stat(filepath.Join(root, "go.mod"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kindcluster: run from the repository root:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	switch os.Args[1] {
	case "image":
		var ref string
		ref, err = (&nodeimage.Builder{Root: root, Log: log}).Build(ctx)
		if err == nil {
			fmt.Println(ref)
		}
	case "up":
		// make kind-up SECURE=1: Consul with ACLs and TLS (docs/kind-offline.md).
		err = (&kindcluster.Cluster{Root: root, Log: log, Secure: os.Getenv("SECURE") == "1"}).Up(ctx)
	case "down":
		err = (&kindcluster.Cluster{Root: root, Log: log}).Down(ctx)
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kindcluster:", err)
		os.Exit(1)
	}
}
