package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// TestAgentRegistersFromSandboxNotice: the node agent registers a new
// meshed pod at the IP meshlet-cni reports when its rules are in, not
// when kubelet reports the IP in the pod's status (up to a second later,
// which the pod's proxy, and so its app, would wait for). The node agent's log
// says where each registration's address came from.
func TestAgentRegistersFromSandboxNotice(t *testing.T) {
	requireCluster(t)
	cs := clientset(t)
	ns := testNamespace(t, cs, "sandbox-notice")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pod := createPod(t, cs, ns, "web", map[string]string{contract.Inject: "true", contract.Service: "sandbox-web"},
		echoContainer("app", "hello", 8080, 0))
	pod = waitPodState(t, ctx, cs, ns, pod.Name, "Ready", podReady)
	logs, err := agentLogs(ctx, cs, pod.Spec.NodeName)
	if err != nil {
		t.Fatal(err)
	}
	var regs []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "registered" && rec["pod"] == ns+"/"+pod.Name {
			regs = append(regs, rec)
		}
	}
	if len(regs) != 1 {
		t.Fatalf("the agent logged %d registrations of %s/%s, want 1 (the notice's, matching kubelet's IP): %v", len(regs), ns, pod.Name, regs)
	}
	if regs[0]["address_from"] != "meshlet-cni" || regs[0]["address"] != pod.Status.PodIP {
		t.Fatalf("registered %v from %v; want the pod's IP %s from meshlet-cni's sandbox notice", regs[0]["address"], regs[0]["address_from"], pod.Status.PodIP)
	}
}

// agentLogs is the log of the node agent's pod on node.
func agentLogs(ctx context.Context, cs *kubernetes.Clientset, node string) ([]byte, error) {
	ds, err := cs.AppsV1().DaemonSets(suite.MeshletNamespace).Get(ctx, cluster.AgentName, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	pods, err := cs.CoreV1().Pods(suite.MeshletNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: metav1.FormatLabelSelector(ds.Spec.Selector), FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, err
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			return cs.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		}
	}
	return nil, fmt.Errorf("no agent pod on node %s", node)
}
