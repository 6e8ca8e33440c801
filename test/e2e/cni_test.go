package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/test/netnstest"
)

func runtimeConf(ns, name, netns string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: fmt.Sprintf("libcni-%s-%d", name, time.Now().UnixNano()),
		NetNS:       netns, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", name}},
	}
}

// TestPluginThroughLibcni runs the cluster's conflist (bridge + host-local +
// meshlet-cni) through libcni, the way containerd calls it, against pod
// objects in the real API server, with the plugin's get-pods-only identity.
func TestPluginThroughLibcni(t *testing.T) {
	requireLocalNode(t, "runs meshlet-cni through libcni in netns it makes there")
	ctx := context.Background()
	cs := clientset(t)
	ns := testNamespace(t, cs, "libcni")
	list, err := libcni.ConfListFromBytes([]byte(lc.Conflist(lc.MeshletCNIConf())))
	if err != nil {
		t.Fatal(err)
	}
	cniConfig := libcni.NewCNIConfigWithCacheDir([]string{lc.CNIBinDir()}, t.TempDir(), nil)
	a := applier(t)

	createPodObject(t, cs, ns, "injected", injectedAnnotations(redirectConfig))
	createPodObject(t, cs, ns, "plain", nil)
	createPodObject(t, cs, ns, "broken", injectedAnnotations(`{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001,"ExcludeInboundPorts":["80a"]}`))

	t.Run("injected pod gets the rules; ADD twice, CHECK, DEL twice", func(t *testing.T) {
		netns := netnstest.NewNS(t)
		rt := runtimeConf(ns, "injected", netns.Path())
		res, err := cniConfig.AddNetworkList(ctx, list, rt)
		if err != nil {
			t.Fatal(err)
		}
		// prevResult passes through: the bridge's interface and address.
		if out, _ := json.Marshal(res); !strings.Contains(string(out), "10.244.0.") {
			t.Errorf("result lost the bridge's address: %s", out)
		}
		p := mustPlan(t, redirectConfig)
		fams := []iptables.Family{iptables.IPv4}
		if err := a.Verify(netns.Path(), p, fams); err != nil {
			t.Fatalf("after ADD: %v", err)
		}
		// The runtime may repeat ADD; the bridge refuses a second one, so
		// meshlet-cni gets it alone, with the chain's result as prevResult.
		if _, err := cniConfig.AddNetworkList(ctx, meshletOnly(t, res), rt); err != nil {
			t.Fatalf("second ADD: %v", err)
		}
		if err := a.Verify(netns.Path(), p, fams); err != nil {
			t.Fatalf("after a second ADD: %v", err)
		}
		if err := cniConfig.CheckNetworkList(ctx, list, rt); err != nil {
			t.Fatalf("CHECK on intact rules: %v", err)
		}
		// No runtime annotations here: the plugin read the API, and says so once.
		if log := pluginLog(t, ns, "injected", "redirection applied"); strings.Count(log, "annotations_from") != 1 ||
			!strings.Contains(log, `"annotations_from":"api"`) {
			t.Errorf("plugin log for the libcni pod: %s", log)
		}
		viaLo := []string{"-o", "lo", "-m", "comment", "--comment", "meshlet/via-lo", "-j", "RETURN"}
		inNetns(t, netns.Path(), append([]string{"iptables", "-t", "nat", "-D", iptables.ChainOutput}, viaLo...)...)
		if err := cniConfig.CheckNetworkList(ctx, list, rt); err == nil || !strings.Contains(err.Error(), "missing") {
			t.Errorf("CHECK after deleting a rule: %v", err)
		}
		inNetns(t, netns.Path(), append([]string{"iptables", "-t", "nat", "-A", iptables.ChainOutput}, viaLo...)...)
		inNetns(t, netns.Path(), "iptables", "-t", "nat", "-A", iptables.ChainInbound, "-p", "tcp", "--dport", "22", "-j", "RETURN")
		if err := cniConfig.CheckNetworkList(ctx, list, rt); err == nil || !strings.Contains(err.Error(), "unexpected") {
			t.Errorf("CHECK after adding a rule: %v", err)
		}
		for i := 0; i < 2; i++ {
			if err := cniConfig.DelNetworkList(ctx, list, rt); err != nil {
				t.Fatalf("DEL #%d: %v", i+1, err)
			}
		}
		if err := a.Verify(netns.Path(), nil, nil); err != nil {
			t.Errorf("after DEL: %v", err)
		}
	})

	t.Run("plain pod passes through untouched", func(t *testing.T) {
		netns := netnstest.NewNS(t)
		rt := runtimeConf(ns, "plain", netns.Path())
		if _, err := cniConfig.AddNetworkList(ctx, list, rt); err != nil {
			t.Fatal(err)
		}
		if err := a.Verify(netns.Path(), nil, nil); err != nil {
			t.Errorf("a plain pod got rules: %v", err)
		}
		if err := cniConfig.CheckNetworkList(ctx, list, rt); err != nil {
			t.Errorf("CHECK: %v", err)
		}
		if err := cniConfig.DelNetworkList(ctx, list, rt); err != nil {
			t.Error(err)
		}
	})

	t.Run("broken config fails ADD naming pod, annotation and cause", func(t *testing.T) {
		netns := netnstest.NewNS(t)
		rt := runtimeConf(ns, "broken", netns.Path())
		_, err := cniConfig.AddNetworkList(ctx, list, rt)
		if err == nil {
			t.Fatal("ADD succeeded")
		}
		for _, want := range []string{ns + "/broken", contract.RedirectConfig, `ExcludeInboundPorts[0]: "80a"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %q", err, want)
			}
		}
		if err := a.Verify(netns.Path(), nil, nil); err != nil {
			t.Errorf("a failed ADD left rules: %v", err)
		}
		if err := cniConfig.DelNetworkList(ctx, list, rt); err != nil {
			t.Errorf("DEL after a failed ADD: %v", err)
		}
	})

	t.Run("unknown pod fails ADD", func(t *testing.T) {
		netns := netnstest.NewNS(t)
		rt := runtimeConf(ns, "nobody", netns.Path())
		if _, err := cniConfig.AddNetworkList(ctx, list, rt); err == nil || !strings.Contains(err.Error(), "pod not found") {
			t.Errorf("ADD for a pod that does not exist: %v", err)
		}
		_ = cniConfig.DelNetworkList(ctx, list, rt)
	})

	t.Run("annotations from the runtime need no API call", func(t *testing.T) {
		netns := netnstest.NewNS(t)
		// This pod does not exist in the API: only the runtime knows it.
		rt := runtimeConf(ns, "runtime-only", netns.Path())
		rt.CapabilityArgs = map[string]any{contract.CapabilityPodAnnotations: injectedAnnotations(redirectConfig)}
		if _, err := cniConfig.AddNetworkList(ctx, list, rt); err != nil {
			t.Fatal(err)
		}
		if err := a.Verify(netns.Path(), mustPlan(t, redirectConfig), []iptables.Family{iptables.IPv4}); err != nil {
			t.Error(err)
		}
		if err := cniConfig.DelNetworkList(ctx, list, rt); err != nil {
			t.Error(err)
		}
	})

	t.Run("DEL before ADD and without a netns", func(t *testing.T) {
		netns := netnstest.NewNS(t)
		if err := cniConfig.DelNetworkList(ctx, list, runtimeConf(ns, "injected", netns.Path())); err != nil {
			t.Errorf("DEL before ADD: %v", err)
		}
		if err := cniConfig.DelNetworkList(ctx, list, runtimeConf(ns, "injected", "")); err != nil {
			t.Errorf("DEL without netns: %v", err)
		}
		if err := cniConfig.DelNetworkList(ctx, list, runtimeConf(ns, "injected", "/var/run/netns/gone-already")); err != nil {
			t.Errorf("DEL with a vanished netns: %v", err)
		}
	})

	t.Run("unchained use is refused", func(t *testing.T) {
		conf, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "alone", "type": "meshlet-cni", "kubeconfig": lc.MeshletCNIKubeconfig()})
		single, err := libcni.NetworkPluginConfFromBytes(conf)
		if err != nil {
			t.Fatal(err)
		}
		netns := netnstest.NewNS(t)
		_, err = cniConfig.AddNetwork(ctx, single, runtimeConf(ns, "injected", netns.Path()))
		if err == nil || !strings.Contains(err.Error(), "must be chained") {
			t.Errorf("ADD without prevResult: %v", err)
		}
	})

	t.Run("STATUS and GC (CNI 1.1)", func(t *testing.T) {
		statusList := func(kubeconfig string) *libcni.NetworkConfigList {
			b, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "status", "plugins": []map[string]any{
				{"type": "meshlet-cni", "kubeconfig": kubeconfig}}})
			l, err := libcni.ConfListFromBytes(b)
			if err != nil {
				t.Fatal(err)
			}
			return l
		}
		if err := cniConfig.GetStatusNetworkList(ctx, statusList(lc.MeshletCNIKubeconfig())); err != nil {
			t.Errorf("STATUS with a working kubeconfig: %v", err)
		}
		err := cniConfig.GetStatusNetworkList(ctx, statusList("/nonexistent/kubeconfig"))
		if e, ok := err.(*types.Error); !ok || e.Code != 50 {
			t.Errorf("STATUS without a kubeconfig: %v, want CNI error 50", err)
		}
		if err := cniConfig.GCNetworkList(ctx, statusList(lc.MeshletCNIKubeconfig()), &libcni.GCArgs{}); err != nil {
			t.Errorf("GC: %v", err)
		}
	})
}

// pluginLog returns the plugin's log line with msg for a pod.
func pluginLog(t *testing.T, ns, name, msg string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(lc.Dir, "logs", "meshlet-cni.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, `"pod_namespace":"`+ns+`"`) && strings.Contains(line, `"pod_name":"`+name+`"`) && strings.Contains(line, msg) {
			return line
		}
	}
	return ""
}

// meshletOnly is a conflist of meshlet-cni alone whose configuration
// carries prev as prevResult, as if the chain before it had just run.
func meshletOnly(t *testing.T, prev types.Result) *libcni.NetworkConfigList {
	t.Helper()
	conf := lc.MeshletCNIConf()
	raw, err := json.Marshal(prev)
	if err != nil {
		t.Fatal(err)
	}
	conf["prevResult"] = json.RawMessage(raw)
	b, _ := json.Marshal(map[string]any{"cniVersion": prev.Version(), "name": cluster.NetworkName, "plugins": []any{conf}})
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func inNetns(t *testing.T, netns string, args ...string) {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + netns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter %v: %v: %s", args, err, out)
	}
}

// TestPluginOnKubelet: with meshlet-cni chained into the node's conflist,
// the real kubelet and containerd set pods up through it.
func TestPluginOnKubelet(t *testing.T) {
	requireLocalNode(t, "reads pods' rules in their netns")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := clientset(t)
	ns := testNamespace(t, cs, "kubelet-cni")
	app := echoContainer("app", "hi", 8080, 0)
	createPod(t, cs, ns, "injected", injectedAnnotations(redirectConfig), app)
	createPod(t, cs, ns, "plain", nil, app)
	createPod(t, cs, ns, "broken", injectedAnnotations(`{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001,"ExcludeUIDs":["root"]}`), app)
	a := applier(t)

	waitPodRunning(t, ctx, cs, ns, "injected")
	netns, err := lc.PodNetNS(ctx, ns, "injected")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(netns, mustPlan(t, redirectConfig), []iptables.Family{iptables.IPv4}); err != nil {
		t.Errorf("injected pod: %v", err)
	}
	// containerd passed the annotations: the plugin made no API call.
	if log := pluginLog(t, ns, "injected", "redirection applied"); !strings.Contains(log, `"annotations_from":"runtime"`) {
		t.Errorf("plugin log for the injected pod: %s", log)
	}

	waitPodRunning(t, ctx, cs, ns, "plain")
	netns, err = lc.PodNetNS(ctx, ns, "plain")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(netns, nil, nil); err != nil {
		t.Errorf("plain pod: %v", err)
	}

	var msg string
	waitFor(t, ctx, "the broken pod's sandbox failure event", func(ctx context.Context) (bool, error) {
		evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=broken"})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if e.Reason == "FailedCreatePodSandBox" {
				msg = e.Message
				return true, nil
			}
		}
		return false, nil
	})
	for _, want := range []string{"meshlet-cni", ns + "/broken", contract.RedirectConfig, `ExcludeUIDs[0]: "root"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("event %q does not name %q", msg, want)
		}
	}
	p, err := cs.CoreV1().Pods(ns).Get(ctx, "broken", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase == corev1.PodRunning {
		t.Error("the broken pod is Running")
	}
}

// TestRedirectionOnKubelet sends real traffic through a pod set up by the
// real kubelet with meshlet-cni: stand-in listeners on the proxy's ports
// (running as the proxy UID) show where connections land. Only pods and
// kubectl exec: it runs on any cluster meshlet-cni is chained on.
func TestRedirectionOnKubelet(t *testing.T) {
	requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := clientset(t)
	ns := testNamespace(t, cs, "redirect")
	createPod(t, cs, ns, "meshed", injectedAnnotations(`{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001}`),
		echoContainer("app", "app", 8080, 0), echoContainer("inbound", "inbound-proxy", 20000, 5995),
		echoContainer("outbound", "outbound-proxy", 15001, 5995), shellContainer())
	createPod(t, cs, ns, "plain", nil, echoContainer("app", "plain-app", 8080, 0), shellContainer())
	meshed := waitPodRunning(t, ctx, cs, ns, "meshed")
	plain := waitPodRunning(t, ctx, cs, ns, "plain")

	curl := func(pod, url string) string {
		var out string
		// The listeners may still be starting: retry briefly.
		waitFor(t, ctx, pod+" → "+url, func(context.Context) (bool, error) {
			var err error
			out, err = kubectlErr("exec", "-n", ns, pod, "-c", "client", "--", "curl", "-sS", "-m", "3", url)
			return err == nil, nil
		})
		return strings.TrimSpace(out)
	}
	for _, tc := range []struct{ name, from, url, want string }{
		{"outbound from the app goes to the outbound listener", "meshed", "http://" + plain.Status.PodIP + ":8080/", "outbound-proxy"},
		{"loopback stays in the pod", "meshed", "http://127.0.0.1:8080/", "app"},
		{"inbound goes to the inbound listener", "plain", "http://" + meshed.Status.PodIP + ":8080/", "inbound-proxy"},
		{"a plain pod is untouched", "plain", "http://" + plain.Status.PodIP + ":8080/", "plain-app"},
	} {
		if got := curl(tc.from, tc.url); got != tc.want {
			t.Errorf("%s: %s curl %s answered %q, want %q", tc.name, tc.from, tc.url, got, tc.want)
		}
	}
}
