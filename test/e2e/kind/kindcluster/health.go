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

// checkPodNetwork proves pod traffic between the workers: an http-echo
// pod on each worker, answering with its node's name, is fetched by IP
// from the pod on the other worker.
func (c *Cluster) checkPodNetwork(ctx context.Context) error {
	t0 := time.Now()
	var manifest strings.Builder
	fmt.Fprintf(&manifest, "apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n", checkNamespace)
	for i, node := range Workers {
		fmt.Fprintf(&manifest, `---
apiVersion: v1
kind: Pod
metadata: {name: echo-%d, namespace: %s}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 0
  containers:
    - name: echo
      image: %s
      imagePullPolicy: Never
      args: ["-listen=:5678", "-text=%s"]
      readinessProbe: {httpGet: {path: /, port: 5678}, periodSeconds: 1}
`, i, checkNamespace, node, cluster.StaticServerImage, node)
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
		out, err := c.kubectl(ctx, nil, "-n", checkNamespace, "exec", fmt.Sprintf("echo-%d", i), "--",
			"wget", "-q", "-T", "5", "-O", "-", url)
		if err != nil {
			return fmt.Errorf("pod on %s cannot reach the pod on %s (%s): %w", Workers[i], Workers[j], url, err)
		}
		if out != Workers[j] {
			return fmt.Errorf("pod on %s fetched %s: got %q, want %q", Workers[i], url, out, Workers[j])
		}
	}
	c.Log.Info("pods on each worker reach each other by IP", "ips", ips, "took", time.Since(t0).Round(time.Millisecond))
	return nil
}
