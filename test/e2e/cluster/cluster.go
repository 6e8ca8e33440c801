// Package cluster runs a real single-node Kubernetes cluster with Consul on
// this machine: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, kube-proxy, containerd and kubelet, plus a Consul server
// and a Consul client agent, and as pods CoreDNS (cluster DNS), meshlet's
// node agent and its webhook. Every packet stays on the harness's own bridge
// (see docs/local-cluster.md); Down stops what Up started by its recorded PID
// and restores the host.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// Addresses and names of the local cluster. The node lives on the harness's
// bridge, so no test packet touches the machine's external interface.
const (
	NodeName    = "meshlet-node"
	Bridge      = "meshlet0"
	NodeIP      = "10.244.0.1"
	PodCIDR     = "10.244.0.0/24"
	ServiceCIDR = "10.96.0.0/16"
	APIServerIP = "10.96.0.1"
	ClusterDNS  = "10.96.0.10"
	NetworkName = "meshlet-pods"

	ConsulHTTPPort = 8500
	ConsulGRPCPort = 8502
)

// Cluster is one local cluster, identified by its state directory.
type Cluster struct {
	Root string // repository root (bin/ lives here)
	Dir  string // state directory, normally <root>/.cluster
	Log  *slog.Logger
	// Secure boots Consul as the official chart's secure install does
	// (secure_cluster.go: ACLs with default deny, TLS only, the Kubernetes
	// auth method) and installs meshlet for it; make cluster-up SECURE=1.
	Secure bool
}

// New returns the cluster whose state lives in root/.cluster.
func New(root string) *Cluster {
	return &Cluster{
		Root: root,
		Dir:  filepath.Join(root, ".cluster"),
		Log:  slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
}

func (c *Cluster) bin(name string) string  { return filepath.Join(c.Root, "bin", name) }
func (c *Cluster) path(p ...string) string { return filepath.Join(append([]string{c.Dir}, p...)...) }

// Kubeconfig is the admin kubeconfig of the running cluster.
func (c *Cluster) Kubeconfig() string { return c.path("admin.kubeconfig") }

// CNIBinDir and CNIConfDir are the CNI directories containerd reads.
func (c *Cluster) CNIBinDir() string  { return c.path("cni", "bin") }
func (c *Cluster) CNIConfDir() string { return c.path("cni", "net.d") }

// KubeletDir is kubelet's --root-dir: pods' volumes are under it.
func (c *Cluster) KubeletDir() string { return c.path("kubelet") }

// ConsulHTTPAddr is the node's Consul client agent, as pods see it.
func ConsulHTTPAddr() string { return fmt.Sprintf("%s:%d", NodeIP, ConsulHTTPPort) }

// Up boots the cluster and waits until it is ready. Leftovers of an earlier
// run (crashed or not) are cleared first.
func (c *Cluster) Up(ctx context.Context) (err error) {
	t0 := time.Now()
	if err := c.Down(ctx); err != nil {
		return fmt.Errorf("clear leftovers of an earlier run: %w", err)
	}
	// After Down, so ports held by a crashed run's components are free.
	if err := checkPortsFree(append(c.fixedPorts(), podPorts...)); err != nil {
		return err
	}
	if err := c.checkPrerequisites(); err != nil {
		return err
	}
	if err := os.RemoveAll(c.path("logs")); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			c.Log.Error("cluster-up failed; logs are in "+c.path("logs"), "err", err)
		}
	}()
	if err := c.recordHost(); err != nil {
		return err
	}
	if err := c.setupHost(); err != nil {
		return err
	}
	if err := c.writePKI(); err != nil {
		return err
	}
	if err := c.writeCNI(); err != nil {
		return err
	}
	if err := c.startStorageAndRuntime(ctx); err != nil {
		return err
	}
	if err := c.startControlPlane(ctx); err != nil {
		return err
	}
	if err := c.startNode(ctx); err != nil {
		return err
	}
	if err := c.startConsul(ctx); err != nil {
		return err
	}
	if err := c.waitReady(ctx); err != nil {
		return err
	}
	if err := c.createConsulDNS(ctx); err != nil {
		return err
	}
	if err := c.InstallMeshlet(ctx); err != nil {
		return err
	}
	// CoreDNS starts while the webhook does; it goes through the chain
	// the node agent has just installed, like every later pod.
	if err := c.createDNS(ctx); err != nil {
		return err
	}
	if err := c.WaitWebhook(ctx); err != nil {
		return err
	}
	if err := c.waitDNS(ctx); err != nil {
		return err
	}
	if err := c.writeEnv(); err != nil {
		return err
	}
	c.Log.Info("cluster up", "took", time.Since(t0).Round(time.Millisecond), "dns", ClusterDNS, "env", c.path("env"))
	return nil
}

// Down stops everything Up started and restores the host. It is idempotent
// and also clears what a crashed run left behind.
func (c *Cluster) Down(ctx context.Context) error {
	t0 := time.Now()
	if _, err := os.Stat(c.Dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	// Pods first, through the runtime, so CNI DEL runs for each sandbox.
	for _, n := range []string{"kubelet", "kube-controller-manager", "kube-scheduler"} {
		errs = append(errs, c.stop(n, 10*time.Second))
	}
	errs = append(errs, c.removeSandboxes(ctx))
	for _, n := range []string{"containerd", "consul-client", "consul-server", "kube-proxy", "kube-apiserver", "etcd"} {
		errs = append(errs, c.stop(n, 15*time.Second))
	}
	errs = append(errs, c.stopShims())
	errs = append(errs, c.restoreHost())
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Keep the logs of the last run for post-mortems; drop the rest.
	if err := c.wipeState(); err != nil {
		return err
	}
	c.Log.Info("cluster down", "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// wipeState removes the state directory except logs/.
func (c *Cluster) wipeState() error {
	entries, err := os.ReadDir(c.Dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == "logs" {
			continue
		}
		if err := os.RemoveAll(c.path(e.Name())); err != nil {
			return fmt.Errorf("wipe %s: %w", e.Name(), err)
		}
	}
	return nil
}
