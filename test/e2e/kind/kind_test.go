// Package kind holds the tests of the kind setup in this directory:
// run.sh cannot run where there is no Docker, so what it feeds kind, the
// official Consul chart and meshlet's chart is checked here, in the
// normal go test run, against what each of them accepts.
package kind

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/test/e2e/target"
)

// strictYAML decodes as kind's own config loader does (go.yaml.in/yaml/v3,
// known fields only): a key the target type lacks is an error.
func strictYAML(b []byte, v any) error {
	d := yaml.NewDecoder(bytes.NewReader(b))
	d.KnownFields(true)
	return d.Decode(v)
}

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKindConfig: kind-config.yaml is a v1alpha4 Cluster as kind reads it,
// with kind's default CNI and one control plane and one worker (the
// suite's pods all land on the worker; see the file).
func TestKindConfig(t *testing.T) {
	raw := read(t, "kind-config.yaml")
	var c v1alpha4.Cluster
	if err := strictYAML(raw, &c); err != nil {
		t.Fatalf("kind-config.yaml: %v", err)
	}
	if c.APIVersion != "kind.x-k8s.io/v1alpha4" || c.Kind != "Cluster" {
		t.Errorf("apiVersion %q, kind %q: want kind.x-k8s.io/v1alpha4 Cluster", c.APIVersion, c.Kind)
	}
	if c.Networking.DisableDefaultCNI {
		t.Error("disableDefaultCNI: want kind's default CNI, which meshlet-cni is chained into")
	}
	var roles []v1alpha4.NodeRole
	for _, n := range c.Nodes {
		roles = append(roles, n.Role)
	}
	if !slices.Equal(roles, []v1alpha4.NodeRole{v1alpha4.ControlPlaneRole, v1alpha4.WorkerRole}) {
		t.Errorf("node roles %v: want one control plane and one worker", roles)
	}
	// The decoding is strict: a misspelt key fails.
	bad := bytes.Replace(raw, []byte("disableDefaultCNI:"), []byte("disableDefaultCni:"), 1)
	if err := strictYAML(bad, &v1alpha4.Cluster{}); err == nil || !strings.Contains(err.Error(), "disableDefaultCni") {
		t.Errorf("a misspelt key: %v, want an error naming it", err)
	}
}

// consulValues are the keys of the official Consul chart (hashicorp/consul
// 1.9.0, the version run.sh pins) that consul-values.yaml sets, read from
// that chart's values.yaml and templates/client-daemonset.yaml. The Go
// module that embeds the chart (github.com/hashicorp/consul-k8s/charts)
// is refused by the module proxy here, so the chart itself cannot be
// rendered in a test; decoding into these fields alone catches a misspelt
// key, which the chart (it has no values schema) would silently ignore.
type consulValues struct {
	Global struct {
		Name       string `yaml:"name"`
		Datacenter string `yaml:"datacenter"`
		TLS        struct {
			Enabled bool `yaml:"enabled"`
		} `yaml:"tls"`
		ACLs struct {
			ManageSystemACLs bool `yaml:"manageSystemACLs"`
		} `yaml:"acls"`
	} `yaml:"global"`
	Server struct {
		Replicas int `yaml:"replicas"`
	} `yaml:"server"`
	Client struct {
		Enabled bool `yaml:"enabled"` // the client DaemonSet; hostPort 8500 (http) unless TLS is https-only
		GRPC    bool `yaml:"grpc"`    // ports { grpc = 8502 } without TLS; hostPort 8502
		// A string the chart runs through tpl into the pod's tolerations.
		Tolerations string `yaml:"tolerations"`
	} `yaml:"client"`
	ConnectInject struct {
		Enabled bool `yaml:"enabled"`
	} `yaml:"connectInject"`
	UI struct {
		Enabled bool `yaml:"enabled"`
	} `yaml:"ui"`
}

// consulChartVersion is the chart version consulValues was read from.
const consulChartVersion = "1.9.0"

// TestConsulValues: client agents on every node with HTTP and gRPC on
// their hostPorts, the chart's injector off, no TLS, no ACLs.
func TestConsulValues(t *testing.T) {
	raw := read(t, "consul-values.yaml")
	var v consulValues
	if err := strictYAML(raw, &v); err != nil {
		t.Fatalf("consul-values.yaml: expected only keys of the Consul chart %s that the test knows: %v", consulChartVersion, err)
	}
	if !v.Client.Enabled || !v.Client.GRPC {
		t.Errorf("client.enabled %v, client.grpc %v: want client agents with their HTTP and gRPC hostPorts", v.Client.Enabled, v.Client.GRPC)
	}
	if v.ConnectInject.Enabled {
		t.Error("connectInject.enabled: want false, meshlet's webhook injects")
	}
	if v.Global.TLS.Enabled || v.Global.ACLs.ManageSystemACLs {
		t.Error("global.tls.enabled or global.acls.manageSystemACLs: meshlet's sidecars get neither yet")
	}
	if v.Global.Name != "consul" || v.Server.Replicas != 1 {
		t.Errorf("global.name %q, server.replicas %d: run.sh finds the agents as app=consul pods of one server", v.Global.Name, v.Server.Replicas)
	}
	var tols []corev1.Toleration
	if err := sigsyaml.UnmarshalStrict([]byte(v.Client.Tolerations), &tols); err != nil {
		t.Fatalf("client.tolerations %q: expected a list of tolerations: %v", v.Client.Tolerations, err)
	}
	cp := corev1.Taint{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}
	if !slices.ContainsFunc(tols, func(tol corev1.Toleration) bool { return tol.ToleratesTaint(&cp) }) {
		t.Errorf("client.tolerations %+v: want the control plane's taint tolerated, an agent on every node", tols)
	}
	bad := bytes.Replace(raw, []byte("  grpc: true"), []byte("  gprc: true"), 1)
	if err := strictYAML(bad, &consulValues{}); err == nil || !strings.Contains(err.Error(), "gprc") {
		t.Errorf("a misspelt key: %v, want an error naming it", err)
	}
}

// TestRunScript: run.sh parses, passes shellcheck, pins the Consul chart
// consulValues was read from, and builds the images the suite and the
// seed's manifests expect under their names.
func TestRunScript(t *testing.T) {
	if out, err := exec.Command("bash", "-n", "run.sh").CombinedOutput(); err != nil {
		t.Fatalf("bash -n run.sh: %v\n%s", err, out)
	}
	t.Run("shellcheck", func(t *testing.T) {
		sc, err := exec.LookPath("shellcheck")
		if err != nil {
			t.Skip("no shellcheck on $PATH: make tools installs it (Debian's shellcheck)")
		}
		if out, err := exec.Command(sc, "run.sh").CombinedOutput(); err != nil {
			t.Fatalf("shellcheck run.sh: %v\n%s", err, out)
		}
	})
	script := string(read(t, "run.sh"))
	vars := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^([A-Z_]+)=\$\{[A-Z_]+:-([^}]*)\}$|^([A-Z_]+_IMAGE)=(\S+)$`).FindAllStringSubmatch(script, -1) {
		if m[1] != "" {
			vars[m[1]] = m[2]
		} else {
			vars[m[3]] = m[4]
		}
	}
	if got := vars["CONSUL_CHART_VERSION"]; got != consulChartVersion {
		t.Errorf("run.sh installs Consul chart %q; consul-values.yaml was checked against %s", got, consulChartVersion)
	}
	want := map[string]string{"STATIC_SERVER_IMAGE": target.DefaultImages.StaticServer,
		"STATIC_CLIENT_IMAGE": target.DefaultImages.StaticClient, "PAUSE_IMAGE": target.DefaultImages.Pause,
		"MESHLET_IMAGE": meshletImage(t)}
	for k, w := range want {
		if vars[k] != w {
			t.Errorf("run.sh %s=%q, want %q", k, vars[k], w)
		}
	}
	// The seed's manifests name the same images, so they run unchanged.
	for _, f := range []string{"static-server.yaml", "static-client.yaml", "static-client-upstream.yaml"} {
		m := string(read(t, filepath.Join("..", "..", "..", "examples", "mesh", f)))
		if !strings.Contains(m, "image: "+vars["STATIC_SERVER_IMAGE"]+"\n") && !strings.Contains(m, "image: "+vars["STATIC_CLIENT_IMAGE"]+"\n") {
			t.Errorf("examples/mesh/%s names neither image run.sh builds", f)
		}
	}
	if !strings.Contains(script, "-e2e.data-plane="+meshletDataPlane(t)+" ") {
		t.Errorf("run.sh does not pass -e2e.data-plane=%s, meshlet-values.yaml's data plane", meshletDataPlane(t))
	}
}
