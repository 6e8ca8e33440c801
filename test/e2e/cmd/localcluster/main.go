// Command localcluster boots and tears down the local single-node cluster
// (make cluster-up / make cluster-down).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/meshlet/meshlet/test/e2e/cluster"
)

func main() {
	if len(os.Args) != 2 || (os.Args[1] != "up" && os.Args[1] != "down" && os.Args[1] != "status") {
		fmt.Fprintln(os.Stderr, "usage: localcluster up|down|status   (run from the repository root)")
		os.Exit(2)
	}
	root, err := filepath.Abs(".")
	if err == nil {
		_, err = os.Stat(filepath.Join(root, "go.mod"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "localcluster: run from the repository root:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := cluster.New(root)
	// make cluster-up SECURE=1: Consul with ACLs and TLS (docs/local-cluster.md).
	c.Secure = os.Getenv("SECURE") == "1"
	switch os.Args[1] {
	case "up":
		err = c.Up(ctx)
	case "down":
		err = c.Down(ctx)
	case "status":
		err = status(c)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func status(c *cluster.Cluster) error {
	comps, err := c.Status()
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		fmt.Println("no cluster component is running")
		return nil
	}
	total := 0
	fmt.Printf("%-24s %8s %10s\n", "COMPONENT", "PID", "RSS MiB")
	for _, cp := range comps {
		fmt.Printf("%-24s %8d %10.1f\n", cp.Name, cp.PID, float64(cp.RSSKiB)/1024)
		total += cp.RSSKiB
	}
	fmt.Printf("%-24s %8s %10.1f\n", "total", "", float64(total)/1024)
	return nil
}
