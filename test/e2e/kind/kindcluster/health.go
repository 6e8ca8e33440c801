package kindcluster

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// waitHealthy waits for every node to be Ready (each needs its CNI, so
// kube-router runs on it) and for CoreDNS to serve.
func (c *Cluster) waitHealthy(ctx context.Context) error {
	t0 := time.Now()
	for _, w := range [][]string{
		{"wait", "--for=condition=Ready", "nodes", "--all", "--timeout=240s"},
		{"-n", "kube-system", "rollout", "status", "daemonset/kube-router", "--timeout=120s"},
		{"-n", "kube-system", "rollout", "status", "daemonset/kube-proxy", "--timeout=120s"},
		{"-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=180s"},
	} {
		if _, err := c.kubectl(ctx, nil, w...); err != nil {
			return fmt.Errorf("cluster not healthy: %w", err)
		}
	}
	c.Log.Info("nodes Ready, kube-router, kube-proxy and CoreDNS running", "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// checkNamespace holds checkPodNetwork's pods while it runs.
const checkNamespace = "meshlet-kind-check"

// checkPodNetwork proves pod traffic between the workers: on each worker
// an http-echo pod answering with its node's name, and a client pod that
// fetches the other worker's http-echo by its pod IP.
func (c *Cluster) checkPodNetwork(ctx context.Context) error {
	t0 := time.Now()
	var manifest strings.Builder
	fmt.Fprintf(&manifest, "apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n", checkNamespace)
	for i, node := range Workers {
		fmt.Fprintf(&manifest, `---
apiVersion: v1
kind: Pod
metadata: {name: echo-%[1]d, namespace: %[2]s}
spec:
  nodeName: %[3]s
  terminationGracePeriodSeconds: 0
  containers:
    - name: echo
      image: %[4]s
      imagePullPolicy: Never
      args: ["-listen=:5678", "-text=%[3]s"]
      readinessProbe: {httpGet: {path: /, port: 5678}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: client-%[1]d, namespace: %[2]s}
spec:
  nodeName: %[3]s
  terminationGracePeriodSeconds: 0
  containers:
    - {name: client, image: %[5]s, imagePullPolicy: Never, command: [sleep, "3600"]}
`, i, checkNamespace, node, cluster.StaticServerImage, cluster.StaticClientImage)
	}
	if _, err := c.kubectl(ctx, strings.NewReader(manifest.String()), "apply", "-f", "-"); err != nil {
		return err
	}
	defer func() {
		_, _ = c.kubectl(context.WithoutCancel(ctx), nil, "delete", "namespace", checkNamespace, "--wait=false")
	}()
	if _, err := c.kubectl(ctx, nil, "-n", checkNamespace, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
		return fmt.Errorf("check pods not ready: %w", err)
	}
	ips := make([]string, len(Workers))
	for i := range Workers {
		ip, err := c.kubectl(ctx, nil, "-n", checkNamespace, "get", "pod", fmt.Sprintf("echo-%d", i), "-o", "jsonpath={.status.podIP}")
		if err != nil {
			return err
		}
		ips[i] = ip
	}
	for i := range Workers {
		j := 1 - i
		url := fmt.Sprintf("http://%s:5678/", ips[j])
		out, err := c.kubectl(ctx, nil, "-n", checkNamespace, "exec", fmt.Sprintf("client-%d", i), "--",
			"curl", "-sS", "-m", "5", url)
		if err != nil {
			return fmt.Errorf("a pod on %s cannot reach the pod on %s (%s): %w", Workers[i], Workers[j], url, err)
		}
		if out != Workers[j] {
			return fmt.Errorf("a pod on %s fetched %s: got %q, want %q", Workers[i], url, out, Workers[j])
		}
	}
	c.Log.Info("pods on each worker reach a pod on the other by IP", "echo IPs", ips, "took", time.Since(t0).Round(time.Millisecond))
	return nil
}
