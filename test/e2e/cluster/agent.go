package cluster

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshlet/meshlet/contract"
)

// The node agent as the local cluster runs it: the chart's DaemonSet
// (meshlet.go), from the locally built image, which installs meshlet-cni
// into the node's CNI dirs (the path a real cluster takes) and registers
// the node's injected pods with the node's Consul client agent.
const (
	AgentName = "meshlet-agent"
	AgentPort = contract.NodeAgentHTTPPort
)

// AgentKubeconfigDir holds the plugin's kubeconfig on the host; the node agent
// mounts it at the same path, because the path it writes into the
// conflist is read by the plugin on the host.
func (c *Cluster) AgentKubeconfigDir() string { return c.path("meshlet") }

// AgentSocketDir holds the node agent's pod cache socket, at the same path on
// the host (where the plugin dials it) and in the node agent's container.
func (c *Cluster) AgentSocketDir() string { return c.path("run") }

// AgentReady says the node agent's DaemonSet has its pod ready on the node.
func AgentReady(ctx context.Context, cs kubernetes.Interface) error {
	ds, err := cs.AppsV1().DaemonSets(MeshletNamespace).Get(ctx, AgentName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if ds.Status.DesiredNumberScheduled == 0 || ds.Status.NumberReady != ds.Status.DesiredNumberScheduled ||
		ds.Status.UpdatedNumberScheduled != ds.Status.DesiredNumberScheduled || ds.Status.ObservedGeneration != ds.Generation {
		return fmt.Errorf("agent DaemonSet: %d of %d pods ready and updated", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
	}
	return nil
}
