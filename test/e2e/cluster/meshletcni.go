package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The plugin's identity, which the chart creates: a ServiceAccount that
// may only get pods, whose tokens the node agent installs for it. The
// harness mints one more for the tests that run the plugin through libcni
// themselves.
const (
	CNIServiceAccount = "meshlet-cni"
	cniNamespace      = MeshletNamespace
)

// MeshletCNIKubeconfig is the plugin's kubeconfig (a token of the
// meshlet-cni ServiceAccount).
func (c *Cluster) MeshletCNIKubeconfig() string { return c.path("cni", "meshlet-cni.kubeconfig") }

// MeshletCNIConf is meshlet-cni's entry in the conflist.
func (c *Cluster) MeshletCNIConf() map[string]any {
	return map[string]any{
		"type": "meshlet-cni", "kubeconfig": c.MeshletCNIKubeconfig(),
		"log_file": c.path("logs", "meshlet-cni.log"), "log_level": "debug",
		"capabilities": map[string]bool{contract.CapabilityPodAnnotations: true},
	}
}

// RuntimeUsesPlugin asks containerd (CRI status) whether the CNI config it
// loaded chains the plugin.
func (c *Cluster) RuntimeUsesPlugin(ctx context.Context, plugin string) error {
	rt, done, err := c.criClient()
	if err != nil {
		return err
	}
	defer done()
	st, err := rt.Status(ctx, &runtime.StatusRequest{Verbose: true})
	if err != nil {
		return err
	}
	if !strings.Contains(st.Info["cniconfig"], `"type":"`+plugin+`"`) && !strings.Contains(st.Info["cniconfig"], `"type": "`+plugin+`"`) {
		return fmt.Errorf("containerd's loaded CNI config does not chain %s yet", plugin)
	}
	return nil
}

// writeCNIKubeconfig mints the tests' plugin kubeconfig from a token of
// the chart's meshlet-cni ServiceAccount.
func (c *Cluster) writeCNIKubeconfig(ctx context.Context) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	tr, err := cs.CoreV1().ServiceAccounts(cniNamespace).CreateToken(ctx, CNIServiceAccount,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](24 * 3600)}}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	tokenFile := c.path("cni", "meshlet-cni.token")
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		return err
	}
	return c.writeCNIKubeconfigFile(tokenFile)
}

// writeCNIKubeconfigFile writes the plugin's kubeconfig. meshlet-cni reads
// it with its own small reader (cni/kube.go), which knows the keys
// clientcmd writes: certificate-authority, tokenFile.
func (c *Cluster) writeCNIKubeconfigFile(tokenFile string) error {
	return writeKubeconfigFile(c.MeshletCNIKubeconfig(), "local", CNIServiceAccount, c.path("pki", "ca.crt"),
		&clientcmdapi.AuthInfo{TokenFile: tokenFile})
}

// PodNetNS returns the network namespace path of a running pod's sandbox,
// as the runtime knows it.
func (c *Cluster) PodNetNS(ctx context.Context, namespace, name string) (string, error) {
	rt, done, err := c.criClient()
	if err != nil {
		return "", err
	}
	defer done()
	list, err := rt.ListPodSandbox(ctx, &runtime.ListPodSandboxRequest{Filter: &runtime.PodSandboxFilter{
		State: &runtime.PodSandboxStateValue{State: runtime.PodSandboxState_SANDBOX_READY},
		LabelSelector: map[string]string{
			"io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.name": name,
		},
	}})
	if err != nil {
		return "", err
	}
	if len(list.Items) != 1 {
		return "", fmt.Errorf("pod %s/%s: %d ready sandboxes", namespace, name, len(list.Items))
	}
	st, err := rt.PodSandboxStatus(ctx, &runtime.PodSandboxStatusRequest{PodSandboxId: list.Items[0].Id, Verbose: true})
	if err != nil {
		return "", err
	}
	var info struct {
		Pid         int `json:"pid"`
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string } `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		return "", fmt.Errorf("pod %s/%s: sandbox info: %w", namespace, name, err)
	}
	for _, n := range info.RuntimeSpec.Linux.Namespaces {
		if n.Type == "network" && n.Path != "" {
			return n.Path, nil
		}
	}
	if info.Pid > 0 {
		return fmt.Sprintf("/proc/%d/ns/net", info.Pid), nil
	}
	return "", fmt.Errorf("pod %s/%s: the runtime reports no network namespace", namespace, name)
}
