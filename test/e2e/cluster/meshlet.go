package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// meshlet as the local cluster installs it: the Helm chart in
// deploy/daemonset, with bin/helm, the path a user takes. Only what this
// machine needs differs from the chart's defaults (MeshletValues).
const (
	MeshletRelease = "meshlet"
	// MeshletChart is the chart's directory in the repository.
	MeshletChart = "deploy/daemonset"
)

// MeshletValues are the local cluster's chart values: the locally built
// image (never pulled: there is no registry), data plane meshlet (Envoy
// cannot run here), the harness's host dirs in place of /opt/cni/bin and
// /etc/cni/net.d, and the API server itself for the node agent: it runs in the
// host's netns, which cannot route ClusterIPs here.
func (c *Cluster) MeshletValues() map[string]any {
	repo, tag, _ := strings.Cut(MeshletImage, ":")
	values := map[string]any{
		"image":  map[string]any{"repository": repo, "tag": tag, "pullPolicy": "Never"},
		"global": map[string]any{"logLevel": "debug"},
		"connectInject": map[string]any{
			"dataPlane": "meshlet",
			// Short, so that tests scaling the webhook do not wait.
			"shutdownDelay": "1s",
		},
		"agent": map[string]any{
			"cni": map[string]any{
				"binDir": c.CNIBinDir(), "confDir": c.CNIConfDir(),
				"kubeconfigDir": c.AgentKubeconfigDir(), "socketDir": c.AgentSocketDir(),
				"logDir": c.path("logs"), "logLevel": "debug",
			},
			"extraEnv": []map[string]any{
				{"name": "KUBERNETES_SERVICE_HOST", "value": NodeIP},
				{"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
			},
		},
	}
	if c.Secure {
		values["consul"] = secureConsulValues()
	}
	return values
}

// secureConsulValues are what a user of the official chart's secure
// install gives meshlet's chart: HTTPS with the chart's CA Secret, the
// Kubernetes auth method the sidecars log in to, and the node agent's
// token and the token reaper's (docs/operations.md).
func secureConsulValues() map[string]any {
	return map[string]any{
		"servers": map[string]any{"address": ConsulServerAddr, "tlsServerName": ConsulServerName},
		"tls": map[string]any{
			"enabled": true, "httpsPort": ConsulHTTPSPort, "grpcPort": ConsulGRPCTLSPort,
			"caCert": map[string]any{"secretName": ConsulCASecret, "key": ConsulCASecretKey},
		},
		"acl": map[string]any{
			"authMethod":  AuthMethod,
			"tokenSecret": map[string]any{"name": NodeAgentTokenSecret, "key": "token"},
			"reaper":      map[string]any{"tokenSecret": map[string]any{"name": ReaperTokenSecret, "key": "token"}},
		},
	}
}

// Helm runs bin/helm against the cluster, with helm's own state kept in
// the cluster's dir rather than the user's home.
func (c *Cluster) Helm(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.bin("helm"), append(args, "--kubeconfig", c.Kubeconfig())...)
	cmd.Env = append(os.Environ(), c.helmEnv()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (c *Cluster) helmEnv() []string {
	return []string{"HELM_CACHE_HOME=" + c.path("helm", "cache"), "HELM_CONFIG_HOME=" + c.path("helm", "config"),
		"HELM_DATA_HOME=" + c.path("helm", "data")}
}

// InstallMeshlet installs (or upgrades to) the chart with MeshletValues
// and waits until the node agent is ready and containerd has loaded the
// conflist the node agent chained meshlet-cni into, then mints the plugin
// kubeconfig of the tests that run meshlet-cni themselves. The webhook
// starts beside it; WaitWebhook waits for it.
func (c *Cluster) InstallMeshlet(ctx context.Context) error {
	values, err := json.Marshal(c.MeshletValues()) // JSON is YAML
	if err != nil {
		return err
	}
	file := c.path("meshlet-values.yaml")
	if err := os.WriteFile(file, values, 0o644); err != nil {
		return err
	}
	if _, err := c.Helm(ctx, "upgrade", "--install", MeshletRelease, filepath.Join(c.Root, MeshletChart),
		"--namespace", MeshletNamespace, "--create-namespace", "--values", file); err != nil {
		return fmt.Errorf("install meshlet: %w", err)
	}
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	if err := c.waitFor(ctx, "the agent to be ready", func(ctx context.Context) error { return AgentReady(ctx, cs) }); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "containerd to load meshlet-cni", func(ctx context.Context) error {
		return c.RuntimeUsesPlugin(ctx, "meshlet-cni")
	}); err != nil {
		return err
	}
	// Minted on every install: an uninstall deletes the meshlet-cni
	// ServiceAccount, and with it the tests' token.
	if err := c.writeCNIKubeconfig(ctx); err != nil {
		return fmt.Errorf("meshlet-cni credentials for the tests: %w", err)
	}
	return nil
}

// UpgradeMeshlet upgrades the release with InstallMeshlet's values and
// each of sets as a --set; InstallMeshlet puts the local values back. It
// does not wait for the rollout.
func (c *Cluster) UpgradeMeshlet(ctx context.Context, sets ...string) error {
	args := []string{"upgrade", MeshletRelease, filepath.Join(c.Root, MeshletChart),
		"--namespace", MeshletNamespace, "--values", c.path("meshlet-values.yaml")}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	if _, err := c.Helm(ctx, args...); err != nil {
		return fmt.Errorf("upgrade meshlet with %q: %w", sets, err)
	}
	return nil
}

// WaitWebhook waits until the API server injects through the webhook.
func (c *Cluster) WaitWebhook(ctx context.Context) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	return c.waitFor(ctx, "the webhook to inject", func(ctx context.Context) error { return WebhookInjects(ctx, cs) })
}
