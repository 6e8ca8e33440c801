package target

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// parse parses args as the suite's command line.
func parse(t *testing.T, args ...string) (*Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("e2e.test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c := Register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return c, c.Validate()
}

// TestFlags: each combination is accepted, or refused with an error that
// names the flag and says what was expected.
func TestFlags(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte("apiVersion: v1\nkind: Config\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "no-such-kubeconfig")
	ext := []string{"-e2e.kubeconfig=" + kc, "-e2e.consul-addr=127.0.0.1:18500"}
	for _, tc := range []struct {
		name     string
		args     []string
		external bool
		want     []string // substrings of the error; none: accepted
	}{
		{"no flags: the local cluster", nil, false, nil},
		{"the local cluster's own data plane", []string{"-e2e.data-plane=meshlet"}, false, nil},
		{"kind: envoy", append(ext, "-e2e.data-plane=envoy"), true, nil},
		{"consul data plane", append(ext, "-e2e.data-plane=consul"), true, nil},
		{"other images and namespace", append(ext, "-e2e.data-plane=meshlet", "-e2e.meshlet-namespace=mesh",
			"-e2e.static-server-image=registry.example.com/t/static-server:1", "-e2e.static-client-image=registry.example.com/t/static-client:1",
			"-e2e.pause-image=registry.example.com/t/pause:1"), true, nil},
		{"a DNS name and port", []string{"-e2e.kubeconfig=" + kc, "-e2e.consul-addr=consul.example:8500", "-e2e.data-plane=envoy"}, true, nil},

		{"bad data plane", append(ext, "-e2e.data-plane=istio"), true,
			[]string{`-e2e.data-plane="istio"`, "expected one of envoy, consul, meshlet"}},
		{"no data plane", ext, true, []string{`-e2e.data-plane=""`, "expected one of envoy, consul, meshlet"}},
		{"kubeconfig missing", []string{"-e2e.kubeconfig=" + missing, "-e2e.consul-addr=127.0.0.1:8500", "-e2e.data-plane=envoy"}, true,
			[]string{"-e2e.kubeconfig=" + missing, "expected a readable kubeconfig file", "no such file or directory"}},
		{"kubeconfig a directory", []string{"-e2e.kubeconfig=" + dir, "-e2e.consul-addr=127.0.0.1:8500", "-e2e.data-plane=envoy"}, true,
			[]string{"-e2e.kubeconfig=" + dir, "expected a kubeconfig file, got a directory"}},
		{"no Consul address", []string{"-e2e.kubeconfig=" + kc, "-e2e.data-plane=envoy"}, true,
			[]string{`-e2e.consul-addr=""`, "expected [https://]host:port"}},
		{"Consul address without port", []string{"-e2e.kubeconfig=" + kc, "-e2e.consul-addr=127.0.0.1", "-e2e.data-plane=envoy"}, true,
			[]string{`-e2e.consul-addr="127.0.0.1"`, "expected [https://]host:port", "missing port"}},
		{"Consul address, port 0", []string{"-e2e.kubeconfig=" + kc, "-e2e.consul-addr=127.0.0.1:0", "-e2e.data-plane=envoy"}, true,
			[]string{`-e2e.consul-addr="127.0.0.1:0"`, `port "0": expected 1-65535`}},
		{"Consul address, no host", []string{"-e2e.kubeconfig=" + kc, "-e2e.consul-addr=:8500", "-e2e.data-plane=envoy"}, true,
			[]string{`-e2e.consul-addr=":8500"`, "no host"}},
		{"Consul address for the local cluster", []string{"-e2e.consul-addr=127.0.0.1:8500"}, false,
			[]string{"-e2e.consul-addr=127.0.0.1:8500: expected only with -e2e.kubeconfig"}},
		{"Consul token for the local cluster", []string{"-e2e.consul-token-file=/tmp/x"}, false,
			[]string{"-e2e.consul-token-file=/tmp/x: expected only with -e2e.kubeconfig"}},
		{"Consul address with https", []string{"-e2e.kubeconfig=" + kc, "-e2e.consul-addr=https://127.0.0.1:8501", "-e2e.data-plane=envoy"}, true, nil},
		{"Consul address, another scheme", []string{"-e2e.kubeconfig=" + kc, "-e2e.consul-addr=grpc://127.0.0.1:8502", "-e2e.data-plane=envoy"}, true,
			[]string{`-e2e.consul-addr="grpc://127.0.0.1:8502"`, `scheme "grpc": expected http or https`}},
		{"Consul CA file missing", []string{"-e2e.kubeconfig=" + kc, "-e2e.consul-addr=https://127.0.0.1:8501", "-e2e.data-plane=envoy",
			"-e2e.consul-ca-file=" + missing}, true, []string{"-e2e.consul-ca-file=" + missing, "expected a readable file"}},
		{"envoy on the local cluster", []string{"-e2e.data-plane=envoy"}, false,
			[]string{"-e2e.data-plane=envoy: the local cluster installs data plane meshlet"}},
		{"another namespace on the local cluster", []string{"-e2e.meshlet-namespace=mesh"}, false,
			[]string{"-e2e.meshlet-namespace=mesh: the local cluster installs meshlet in meshlet"}},
		{"other images on the local cluster", []string{"-e2e.pause-image=busybox:1"}, false,
			[]string{"the local cluster builds its own", "need -e2e.kubeconfig"}},
		{"bad image", append(ext, "-e2e.data-plane=envoy", "-e2e.static-client-image=Not An Image"), true,
			[]string{`-e2e.static-client-image="Not An Image"`, "expected an image reference"}},
		{"empty namespace", append(ext, "-e2e.data-plane=envoy", "-e2e.meshlet-namespace="), true,
			[]string{"-e2e.meshlet-namespace: expected the namespace of meshlet's release"}},
		{"every error at once", []string{"-e2e.kubeconfig=" + missing, "-e2e.data-plane=x"}, true,
			[]string{"-e2e.kubeconfig=", "-e2e.consul-addr=", "-e2e.data-plane="}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(t, tc.args...)
			if c != nil && c.External() != tc.external {
				t.Errorf("External() = %v, want %v", c.External(), tc.external)
			}
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("%q: %v, want it accepted", tc.args, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("%q: accepted, want an error with %q", tc.args, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q: error %q lacks %q", tc.args, err, w)
				}
			}
		})
	}
	if _, err := parse(t, "-e2e.no-such-flag=1"); err == nil {
		t.Error("an unknown flag was accepted")
	}
}

// TestLocalMatchesCluster: without flags the suite assumes what the local
// cluster installs; that must be what test/e2e/cluster installs.
func TestLocalMatchesCluster(t *testing.T) {
	root := t.TempDir()
	c := Local(cluster.New(root))
	if err := (Config{DataPlane: c.DataPlane, MeshletNamespace: c.MeshletNamespace, Images: c.Images}).Validate(); err != nil {
		t.Errorf("the local cluster's values as flags: %v", err)
	}
	ci, _ := cluster.New(root).MeshletValues()["connectInject"].(map[string]any)
	if dp := ci["dataPlane"]; dp != LocalDataPlane {
		t.Errorf("the local cluster installs data plane %v; LocalDataPlane is %s", dp, LocalDataPlane)
	}
	if c.Kubeconfig != cluster.New(root).Kubeconfig() || c.ConsulAddr != cluster.ConsulHTTPAddr() || c.ACLs() || c.ConsulCAFile != "" {
		t.Errorf("Local(%s) = %+v: want the local cluster's kubeconfig and Consul agent, without TLS or ACLs", root, c)
	}
	secure := cluster.New(root)
	secure.Secure = true
	s := Local(secure)
	if s.ConsulAddr != "https://10.244.0.1:8501" || !s.ACLs() || s.ConsulCAFile == "" {
		t.Errorf("Local of a secure cluster = %+v: want HTTPS on 8501, a CA and a token", s)
	}
}

func TestWebhookDataPlane(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"webhook", "-listen", ":8080", "-data-plane", "envoy", "-native-sidecar", "auto"}, "envoy"},
		{[]string{"webhook", "-data-plane=meshlet"}, "meshlet"},
		{[]string{"webhook", "--data-plane", "consul"}, "consul"},
	} {
		if got, err := WebhookDataPlane(tc.args); err != nil || got != tc.want {
			t.Errorf("WebhookDataPlane(%q) = %q, %v; want %q", tc.args, got, err, tc.want)
		}
	}
	for _, args := range [][]string{{"webhook", "-listen", ":8080"}, {"webhook", "-data-plane"}, {"webhook", "-data-planes", "x"}} {
		if got, err := WebhookDataPlane(args); err == nil {
			t.Errorf("WebhookDataPlane(%q) = %q, want an error", args, got)
		}
	}
}

func TestSchedulableNodes(t *testing.T) {
	ready := corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}
	node := func(name string, st corev1.NodeStatus, spec corev1.NodeSpec) corev1.Node {
		return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec, Status: st}
	}
	nodes := []corev1.Node{
		node("worker-b", ready, corev1.NodeSpec{}),
		node("control-plane", ready, corev1.NodeSpec{Taints: []corev1.Taint{{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}}}),
		node("worker-a", ready, corev1.NodeSpec{Taints: []corev1.Taint{{Key: "soft", Effect: corev1.TaintEffectPreferNoSchedule}}}),
		node("cordoned", ready, corev1.NodeSpec{Unschedulable: true}),
		node("not-ready", corev1.NodeStatus{}, corev1.NodeSpec{}),
		node("draining", ready, corev1.NodeSpec{Taints: []corev1.Taint{{Key: "x", Effect: corev1.TaintEffectNoExecute}}}),
	}
	if got := SchedulableNodes(nodes); !slices.Equal(got, []string{"worker-a", "worker-b"}) {
		t.Errorf("SchedulableNodes = %v, want [worker-a worker-b]", got)
	}
}
