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

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/test/repobin"
)

// meshletValues is what the tests read from meshlet-values.yaml; the
// chart's schema checks the rest (TestMeshletValues).
type meshletValues struct {
	Image struct {
		Repository, Tag string
	}
	ConnectInject struct {
		DataPlane string `json:"dataPlane"`
	} `json:"connectInject"`
}

func readMeshletValues(t *testing.T) meshletValues {
	t.Helper()
	var v meshletValues
	if err := sigsyaml.Unmarshal(read(t, "meshlet-values.yaml"), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// meshletImage is the image meshlet-values.yaml installs.
func meshletImage(t *testing.T) string {
	v := readMeshletValues(t)
	return v.Image.Repository + ":" + v.Image.Tag
}

func meshletDataPlane(t *testing.T) string { return readMeshletValues(t).ConnectInject.DataPlane }

// helm runs the repository's bin/helm with throwaway state.
func helm(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(repobin.Need(t, "helm", "make tools"), args...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// TestMeshletValues: meshlet's chart accepts meshlet-values.yaml (lint
// with its schema, which refuses unknown keys), and renders a webhook
// injecting Envoy with the Consul agent on the node's ports 8500/8502,
// and a node agent running the image run.sh loads, never pulled.
func TestMeshletValues(t *testing.T) {
	chart := filepath.Join("..", "..", "..", "deploy", "daemonset")
	if out := helm(t, "lint", "--strict", chart, "--namespace", "meshlet", "-f", "meshlet-values.yaml"); !strings.Contains(out, "0 chart(s) failed") ||
		strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
		t.Errorf("helm lint:\n%s", out)
	}
	out := helm(t, "template", "meshlet", chart, "--namespace", "meshlet", "-f", "meshlet-values.yaml")
	decode := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer().Decode
	var webhook *appsv1.Deployment
	var agent *appsv1.DaemonSet
	for _, doc := range regexp.MustCompile(`(?m)^---[ \t]*$`).Split(out, -1) {
		if !strings.Contains(doc, "\nkind: ") {
			continue
		}
		j, err := sigsyaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := decode(j, nil, nil)
		if err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			webhook = o
		case *appsv1.DaemonSet:
			agent = o
		}
	}
	if webhook == nil || agent == nil {
		t.Fatalf("rendered webhook %v, agent %v: want both", webhook != nil, agent != nil)
	}
	args := webhook.Spec.Template.Spec.Containers[0].Args
	image := meshletImage(t)
	for _, pair := range [][2]string{{"-data-plane", "envoy"}, {"-consul-http-port", "8500"}, {"-consul-grpc-port", "8502"},
		{"-meshlet-image", image}, {"-deny-k8s-namespace", "consul"}} {
		if i := slices.Index(args, pair[0]); i < 0 || i+1 >= len(args) || args[i+1] != pair[1] {
			t.Errorf("webhook args %q: want %s %s", args, pair[0], pair[1])
		}
	}
	for what, c := range map[string]corev1.Container{"webhook": webhook.Spec.Template.Spec.Containers[0], "agent": agent.Spec.Template.Spec.Containers[0]} {
		if c.Image != image || c.ImagePullPolicy != corev1.PullNever {
			t.Errorf("%s: image %s, pull policy %s; want %s, Never (kind load puts it on every node)", what, c.Image, c.ImagePullPolicy, image)
		}
	}
	aargs := agent.Spec.Template.Spec.Containers[0].Args
	if i := slices.Index(aargs, "-http-addr"); i < 0 || i+1 >= len(aargs) || aargs[i+1] != "$(HOST_IP):8500" {
		t.Errorf("agent args %q: want -http-addr $(HOST_IP):8500, the node's Consul client agent", aargs)
	}
}
