// Package e2e runs meshlet's end-to-end suite against a real cluster. By
// default TestMain boots the local cluster (test/e2e/cluster), the tests
// use it, and teardown is checked to leave nothing behind on the host.
// With -e2e.kubeconfig (test/e2e/target has every flag) the suite runs
// against an existing cluster instead, kind's for one
// (test/e2e/kind/run.sh): nothing is booted or torn down, and the tests
// that need the local cluster's node skip (requireLocalNode).
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/test/e2e/target"
	"github.com/meshlet/meshlet/test/repobin"
)

var (
	lc         *cluster.Cluster // the local cluster; nil with -e2e.kubeconfig
	skipReason string           // set when a real prerequisite is absent
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse() // the suite's flags decide what follows; m.Run would parse them too late
	var err error
	root, err = filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := flags.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the suite's flags (test/e2e/target):", err)
		return 2
	}
	if flags.External() {
		return runExternal(m)
	}
	lc = cluster.New(root)
	// SECURE=1: Consul with ACLs and TLS (hack/test.sh runs the tests
	// that prove meshlet there in a second run).
	lc.Secure = os.Getenv("SECURE") == "1"
	suite = target.Local(lc)
	tools.kubectl, tools.consul, tools.helm = filepath.Join(root, "bin", "kubectl"), filepath.Join(root, "bin", "consul"), filepath.Join(root, "bin", "helm")
	if os.Geteuid() != 0 {
		skipReason = "the e2e suite needs root to run kubelet, containerd and the host network"
		lc = nil
		return m.Run()
	}
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

// runExternal runs the suite against the flags' cluster: no boot, no
// teardown (the cluster is not the suite's), and no root needed. The
// cluster and the tools are checked first, so that a wrong flag fails
// here with its name instead of as every test's failure.
func runExternal(m *testing.M) int {
	suite = *flags
	var missing []string
	for name, p := range map[string]*string{"kubectl": &tools.kubectl, "consul": &tools.consul, "helm": &tools.helm} {
		var ok bool
		if *p, ok = repobin.Find(name); !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: %v: expected in the repository's bin/ or on $PATH (the tests run them against -%s; "+
			"test/e2e/kind/run.sh builds consul and helm into bin/)\n", missing, target.FlagKubeconfig)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := suite.Preflight(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	fmt.Printf("e2e: against %s (data plane %s, Consul agent %s); tests that need the local cluster's node skip\n",
		suite.Kubeconfig, suite.DataPlane, suite.ConsulAddr)
	return m.Run()
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
