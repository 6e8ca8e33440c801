package target

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"

	capi "github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// Clientset is a client of the cluster of kubeconfig.
func Clientset(kubeconfig string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return kubernetes.NewForConfig(cfg)
}

// ConsulClient is a client of the suite's Consul agent: over HTTPS with
// the CA when c has one, with the token of ConsulTokenFile when c has one.
func (c Config) ConsulClient() (*capi.Client, error) {
	cfg := capi.DefaultConfig()
	cfg.Address = c.ConsulAddr
	if scheme, rest, ok := strings.Cut(c.ConsulAddr, "://"); ok {
		cfg.Scheme, cfg.Address = scheme, rest
	}
	cfg.TLSConfig.CAFile = c.ConsulCAFile
	if c.ConsulTokenFile != "" {
		tok, err := os.ReadFile(c.ConsulTokenFile)
		if err != nil {
			return nil, fmt.Errorf("-%s: %w", FlagConsulTokenFile, err)
		}
		cfg.Token = strings.TrimSpace(string(tok))
	}
	return capi.NewClient(cfg)
}

// ConsulEnv is the consul CLI's environment for the suite's Consul agent.
func (c Config) ConsulEnv() []string {
	env := []string{"CONSUL_HTTP_ADDR=" + c.ConsulAddr}
	if c.ConsulCAFile != "" {
		env = append(env, "CONSUL_CACERT="+c.ConsulCAFile)
	}
	if c.ConsulTokenFile != "" {
		env = append(env, "CONSUL_HTTP_TOKEN_FILE="+c.ConsulTokenFile)
	}
	return env
}

// Preflight checks an existing cluster against the flags before any test
// runs, so that a wrong flag fails at once with its name rather than as a
// test failure minutes later: meshlet's webhook is in -e2e.meshlet-namespace
// and injects -e2e.data-plane; -e2e.consul-addr is a Consul client agent
// (not a server: the tests read the Consul agent's own services and checks); and
// the pods the tests create can only land on that Consul agent's node.
func (c Config) Preflight(ctx context.Context) error {
	cs, err := Clientset(c.Kubeconfig)
	if err != nil {
		return fmt.Errorf("-%s: %w", FlagKubeconfig, err)
	}
	d, err := cs.AppsV1().Deployments(c.MeshletNamespace).Get(ctx, cluster.WebhookName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("meshlet's webhook %s/%s (-%s=%s): expected meshlet's release, called %s, installed there: %w",
			c.MeshletNamespace, cluster.WebhookName, FlagMeshletNamespace, c.MeshletNamespace, cluster.MeshletRelease, err)
	}
	if n := len(d.Spec.Template.Spec.Containers); n != 1 {
		return fmt.Errorf("meshlet's webhook %s/%s: %d containers, expected the one of meshlet's chart", c.MeshletNamespace, cluster.WebhookName, n)
	}
	dp, err := WebhookDataPlane(d.Spec.Template.Spec.Containers[0].Args)
	if err != nil {
		return fmt.Errorf("meshlet's webhook %s/%s: %w", c.MeshletNamespace, cluster.WebhookName, err)
	}
	if dp != c.DataPlane {
		return fmt.Errorf("-%s=%s, but meshlet's webhook %s/%s injects data plane %s", FlagDataPlane, c.DataPlane,
			c.MeshletNamespace, cluster.WebhookName, dp)
	}
	cl, err := c.ConsulClient()
	if err != nil {
		return fmt.Errorf("-%s=%s: %w", FlagConsulAddr, c.ConsulAddr, err)
	}
	self, err := cl.Agent().Self()
	if err != nil {
		return fmt.Errorf("-%s=%s: expected a Consul agent's HTTP API: %w", FlagConsulAddr, c.ConsulAddr, err)
	}
	node, _ := self["Config"]["NodeName"].(string)
	if server, _ := self["Config"]["Server"].(bool); server || node == "" {
		return fmt.Errorf("-%s=%s is the Consul server %q: expected the client agent of the node the tests' pods run on, "+
			"whose own services and checks the tests read", FlagConsulAddr, c.ConsulAddr, node)
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("-%s: list nodes: %w", FlagKubeconfig, err)
	}
	if got := SchedulableNodes(nodes.Items); !slices.Equal(got, []string{node}) {
		return fmt.Errorf("-%s=%s is the Consul agent of node %s, but the tests' pods may run on %v: expected that node alone "+
			"schedulable (kind: the one worker; the control plane keeps its NoSchedule taint)", FlagConsulAddr, c.ConsulAddr, node, got)
	}
	return nil
}

// WebhookDataPlane is the value of -data-plane in the webhook's arguments
// (the chart writes "-data-plane", "<value>").
func WebhookDataPlane(args []string) (string, error) {
	for i, a := range args {
		flagName, value, hasValue := strings.Cut(strings.TrimPrefix(a, "-"), "=")
		if flagName != "data-plane" && flagName != "-data-plane" {
			continue
		}
		if hasValue {
			return value, nil
		}
		if i+1 < len(args) {
			return args[i+1], nil
		}
		return "", fmt.Errorf("args %q: -data-plane without a value", args)
	}
	return "", fmt.Errorf("args %q: expected -data-plane (meshlet's chart always sets it)", args)
}

// SchedulableNodes are the names of the Ready nodes a pod without
// tolerations may be scheduled on, sorted.
func SchedulableNodes(nodes []corev1.Node) []string {
	var out []string
	for _, n := range nodes {
		if n.Spec.Unschedulable || !nodeReady(n) || slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool {
			return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
		}) {
			continue
		}
		out = append(out, n.Name)
	}
	slices.Sort(out)
	return out
}

func nodeReady(n corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
