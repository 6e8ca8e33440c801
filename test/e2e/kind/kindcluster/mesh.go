package kindcluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The mesh make kind-up installs on the cluster: Consul from meshlet's own
// manifests, then meshlet with its chart, the way README tells a user.
const (
	// ConsulManifest is Consul's server and its client agent on every node.
	ConsulManifest = "test/e2e/kind/consul/consul.yaml"
	// MeshletValues are the chart values for kind.
	MeshletValues    = "test/e2e/kind/consul/meshlet-values.yaml"
	MeshletChart     = "deploy/daemonset"
	MeshletRelease   = "meshlet"
	MeshletNamespace = "meshlet"
	// ConsulHTTPPort is where each node's client agent answers, on the
	// node's IP (hostNetwork).
	ConsulHTTPPort = 8500
)

// installMesh installs Consul and meshlet and waits until a Consul client
// agent and a meshlet node agent are ready on every node.
func (c *Cluster) installMesh(ctx context.Context) error {
	t0 := time.Now()
	if _, err := c.kubectl(ctx, nil, "apply", "-f", filepath.Join(c.Root, ConsulManifest)); err != nil {
		return fmt.Errorf("install Consul: %w", err)
	}
	for _, w := range [][]string{
		{"-n", "consul", "rollout", "status", "statefulset/consul-server", "--timeout=180s"},
		{"-n", "consul", "rollout", "status", "daemonset/consul-client", "--timeout=180s"},
	} {
		if _, err := c.kubectl(ctx, nil, w...); err != nil {
			return fmt.Errorf("consul not ready: %w", err)
		}
	}
	c.Log.Info("Consul ready: a server, a client agent on every node", "took", time.Since(t0).Round(time.Millisecond))
	return c.helmInstallMeshlet(ctx, MeshletValues)
}

// helmInstallMeshlet installs meshlet's chart with the values files, the
// later over the earlier, and waits until a node agent is ready on every
// node.
func (c *Cluster) helmInstallMeshlet(ctx context.Context, values ...string) error {
	step := time.Now()
	args := []string{"install", MeshletRelease, filepath.Join(c.Root, MeshletChart),
		"-n", MeshletNamespace, "--create-namespace", "--wait", "--timeout", "180s"}
	for _, v := range values {
		args = append(args, "-f", filepath.Join(c.Root, v))
	}
	if out, err := c.Helm(ctx, args...); err != nil {
		return fmt.Errorf("install meshlet: %w: %s", err, out)
	}
	if _, err := c.kubectl(ctx, nil, "-n", MeshletNamespace, "rollout", "status",
		"daemonset/meshlet-agent", "--timeout=120s"); err != nil {
		return fmt.Errorf("meshlet's node agents not ready: %w", err)
	}
	c.Log.Info("meshlet installed: webhook and a node agent on every node", "took", time.Since(step).Round(time.Millisecond))
	return nil
}

// Helm runs bin/helm against the cluster, with helm's state in .kind.
func (c *Cluster) Helm(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Root, "bin", "helm"), append(args, "--kubeconfig", c.Kubeconfig())...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+c.dir("helm", "cache"),
		"HELM_CONFIG_HOME="+c.dir("helm", "config"), "HELM_DATA_HOME="+c.dir("helm", "data"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// NodeIP is a node's address on the kind network, where its Consul client
// agent answers (the host reaches the nodes' network directly).
func (c *Cluster) NodeIP(ctx context.Context, node string) (string, error) {
	ip, err := runCmd(ctx, nil, "docker", "inspect", "--format",
		"{{(index .NetworkSettings.Networks \""+Network+"\").IPAddress}}", node)
	if err != nil {
		return "", fmt.Errorf("address of node %s: %w", node, err)
	}
	return ip, nil
}
