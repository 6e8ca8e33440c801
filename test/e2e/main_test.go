// Package e2e runs meshlet's end-to-end suite against the real local
// cluster: TestMain boots it (test/e2e/cluster), the tests use it, and
// teardown is checked to leave nothing behind on the host.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/e2e/cluster"
)

var (
	lc         *cluster.Cluster
	skipReason string // set when a real prerequisite is absent
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	root, err := filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if os.Geteuid() != 0 {
		skipReason = "the e2e suite needs root to run kubelet, containerd and the host network"
		return m.Run()
	}
	lc = cluster.New(root)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Clear a crashed run first, so the baseline below is the host's own.
	if err := lc.Down(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: clearing an earlier cluster:", err)
		return 1
	}
	baseline, err := cluster.HostBaseline()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	t0 := time.Now()
	if err := lc.Up(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cluster-up:", err)
		_ = lc.Down(context.Background())
		return 1
	}
	fmt.Printf("e2e: cluster up in %s\n", time.Since(t0).Round(time.Millisecond))
	code := m.Run()
	if os.Getenv("E2E_KEEP_CLUSTER") == "1" {
		fmt.Println("e2e: E2E_KEEP_CLUSTER=1: leaving the cluster running")
		return code
	}
	if err := checkTeardown(baseline); err != nil {
		fmt.Printf("--- FAIL: TestMain/teardown\n    %v\n", err)
		return 1
	}
	fmt.Println("--- PASS: TestMain/teardown (no process, shim, mount, bridge, route or chain left)")
	return code
}

// checkTeardown stops the cluster and asserts the host is as it was.
func checkTeardown(baseline cluster.Baseline) error {
	t0 := time.Now()
	if err := lc.Down(context.Background()); err != nil {
		return fmt.Errorf("cluster-down: %w", err)
	}
	left, err := lc.Leftovers(baseline)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("after cluster-down these remain: %v", left)
	}
	fmt.Printf("e2e: cluster down in %s\n", time.Since(t0).Round(time.Millisecond))
	return nil
}

func requireCluster(t testing.TB) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
