package kind

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/test/e2e/kind/kindcluster"
)

// TestConsulManifest: the client agents of consul/consul.yaml are where
// meshlet's chart (consul/meshlet-values.yaml) looks for them: on every
// node, in the node's network (so at $HOST_IP), on the values' HTTP and
// gRPC ports, named after their Kubernetes node (meshlet registers each pod
// under its node's name); every image is one make kind-up loads, never
// pulled; the chart accepts the values.
func TestConsulManifest(t *testing.T) {
	root := filepath.Join("..", "..", "..")
	b, err := os.ReadFile(filepath.Join(root, kindcluster.ConsulManifest))
	if err != nil {
		t.Fatal(err)
	}
	var values struct {
		Consul struct {
			HTTPPort int `json:"httpPort"`
			GRPCPort int `json:"grpcPort"`
		} `json:"consul"`
	}
	vb, err := os.ReadFile(filepath.Join(root, kindcluster.MeshletValues))
	if err != nil {
		t.Fatal(err)
	}
	if err := sigsyaml.Unmarshal(vb, &values); err != nil {
		t.Fatal(err)
	}
	// The chart's schema refuses unknown keys.
	if out := helm(t, "lint", "--strict", filepath.Join(root, "deploy", "daemonset"), "--namespace", kindcluster.MeshletNamespace,
		"-f", filepath.Join(root, kindcluster.MeshletValues)); !strings.Contains(out, "0 chart(s) failed") ||
		strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
		t.Errorf("helm lint -f %s:\n%s", kindcluster.MeshletValues, out)
	}
	var client *appsv1.DaemonSet
	var server *appsv1.StatefulSet
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var meta struct{ Kind string }
		if err := sigsyaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("consul.yaml: %v", err)
		}
		switch meta.Kind {
		case "DaemonSet":
			client = &appsv1.DaemonSet{}
			if err := sigsyaml.UnmarshalStrict([]byte(doc), client); err != nil {
				t.Fatalf("consul.yaml's DaemonSet: %v", err)
			}
		case "StatefulSet":
			server = &appsv1.StatefulSet{}
			if err := sigsyaml.UnmarshalStrict([]byte(doc), server); err != nil {
				t.Fatalf("consul.yaml's StatefulSet: %v", err)
			}
		}
	}
	if client == nil || server == nil {
		t.Fatalf("consul.yaml: expected a client DaemonSet and a server StatefulSet, got %v and %v", client != nil, server != nil)
	}
	spec := client.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("client agents: expected hostNetwork (pods reach them at $HOST_IP)")
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != "Exists" || spec.Tolerations[0].Key != "" {
		t.Errorf("client agents: tolerations %+v, expected to tolerate every taint (an agent on every node)", spec.Tolerations)
	}
	c := spec.Containers[0]
	if !slices.Contains(c.Args, "-node=$(NODE_NAME)") {
		t.Errorf("client agents: args %v, expected -node=$(NODE_NAME)", c.Args)
	}
	var nodeFromSpec bool
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeFromSpec = true
		}
	}
	if !nodeFromSpec {
		t.Error("client agents: expected NODE_NAME from spec.nodeName")
	}
	// Consul's own defaults: HTTP 8500 unless ports { http } says otherwise.
	if values.Consul.HTTPPort != 8500 || kindcluster.ConsulHTTPPort != 8500 {
		t.Errorf("meshlet-values.yaml consul.httpPort %d, kindcluster.ConsulHTTPPort %d: the client agents serve HTTP on 8500",
			values.Consul.HTTPPort, kindcluster.ConsulHTTPPort)
	}
	if grpc := "-hcl=ports { grpc = " + strconv.Itoa(values.Consul.GRPCPort) + " }"; !slices.Contains(c.Args, grpc) {
		t.Errorf("client agents: args %v, expected %q (meshlet-values.yaml's consul.grpcPort)", c.Args, grpc)
	}
	for what, ctr := range map[string]string{"client": c.Image, "server": server.Spec.Template.Spec.Containers[0].Image} {
		if ctr != cluster.ConsulImage {
			t.Errorf("%s: image %s, expected %s (loaded into every node by make kind-up)", what, ctr, cluster.ConsulImage)
		}
	}
}
