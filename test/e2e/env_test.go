package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/test/e2e/target"
	"github.com/meshlet/meshlet/webhook"
)

// What the suite runs against. Every test reaches the cluster, Consul and
// the images through these, never through the local cluster's constants,
// so that the same test runs on the local cluster (the values are then
// that cluster's: target.Local) and on any other (the flags').
var (
	flags = target.Register(flag.CommandLine)
	suite target.Config
	root  string // the repository's root
	tools struct{ kubectl, consul, helm string }
)

// requireLocalNode skips a test that needs the local cluster's node
// itself, the machine the suite runs on (its netns, containerd, host
// files, host processes, pod IPs routed from the host), when the suite
// runs against another cluster. why says what the test needs there.
func requireLocalNode(t testing.TB, why string) {
	t.Helper()
	requireCluster(t)
	if lc == nil {
		t.Skipf("needs the local cluster's node: %s (-%s runs the suite against another cluster)", why, target.FlagKubeconfig)
	}
}

// requireDataPlane skips a test written for other data planes than the
// one the cluster's webhook injects. On the local cluster it never skips:
// the local cluster runs meshlet, which every test accepts.
func requireDataPlane(t testing.TB, planes ...string) {
	t.Helper()
	requireCluster(t)
	if !slices.Contains(planes, suite.DataPlane) {
		t.Skipf("needs data plane %s; this cluster's webhook injects %s (-%s)", strings.Join(planes, " or "), suite.DataPlane, target.FlagDataPlane)
	}
}

// pullPolicy of the tests' pods: never on the local cluster, whose images
// exist only on its node (no registry); elsewhere a node that has the
// image (kind load) does not pull it, and one that lacks it can.
func pullPolicy() corev1.PullPolicy {
	if lc != nil {
		return corev1.PullNever
	}
	return corev1.PullIfNotPresent
}

// sidecarNames are the sidecar's container names per data plane: the
// names users' scripts look for (docs/operations.md).
var sidecarNames = map[string]string{
	webhook.DataPlaneEnvoy: "envoy-sidecar", webhook.DataPlaneConsul: "consul-sidecar", webhook.DataPlaneMeshlet: "meshlet-proxy",
}

// sidecarName is the name of the sidecar the cluster's webhook injects.
func sidecarName() string { return sidecarNames[suite.DataPlane] }

// Where the webhook puts the sidecar (placeSidecar in webhook/placement.go).
const (
	placedNative = "native sidecar, first in initContainers"
	placedFirst  = "regular container, first in containers, holding the app"
)

// sidecarPlacement says where the sidecar is in p: placedNative,
// placedFirst, or what was found instead.
func sidecarPlacement(p *corev1.Pod) string {
	ic, c := p.Spec.InitContainers, p.Spec.Containers
	switch {
	case len(ic) > 0 && ic[0].Name == sidecarName() && ic[0].RestartPolicy != nil && *ic[0].RestartPolicy == corev1.ContainerRestartPolicyAlways:
		return placedNative
	case len(c) > 1 && c[0].Name == sidecarName() && c[0].Lifecycle != nil && c[0].Lifecycle.PostStart != nil:
		return placedFirst
	}
	return fmt.Sprintf("no %s sidecar where expected: init containers %v, containers %v", sidecarName(), containerNames(ic), containerNames(c))
}

// wantPlacement is where the chart's default, nativeSidecar auto, puts
// the sidecar of p, injected or not: a regular container that holds the
// app for a pod that runs until deleted and has no init containers of its
// own, with the meshlet data plane (its app starts sooner,
// docs/benchmarks.md#meshed-pod-start); a native sidecar otherwise.
func wantPlacement(p *corev1.Pod) string {
	own := 0
	for _, c := range p.Spec.InitContainers {
		if c.Name != sidecarName() {
			own++
		}
	}
	if suite.DataPlane == webhook.DataPlaneMeshlet && own == 0 &&
		(p.Spec.RestartPolicy == "" || p.Spec.RestartPolicy == corev1.RestartPolicyAlways) {
		return placedFirst
	}
	return placedNative
}

// checkPlacement fails t unless p's sidecar is where wantPlacement says.
func checkPlacement(t *testing.T, p *corev1.Pod) {
	t.Helper()
	if got, want := sidecarPlacement(p), wantPlacement(p); got != want {
		t.Fatalf("pod %s: sidecar placed as %q, want %q", p.Name, got, want)
	}
}

// meshManifest is the path of examples/mesh/<name> with the suite's test
// images in place of the local cluster's: the file itself when they are
// the same (the local cluster, kind), or a copy.
func meshManifest(t *testing.T, name string) string {
	t.Helper()
	return exampleManifest(t, "mesh", name)
}

// exampleManifest is examples/<dir>/<name>, written again with the
// suite's test images when they are not the local cluster's.
func exampleManifest(t *testing.T, dir, name string) string {
	t.Helper()
	path := filepath.Join(root, "examples", dir, name)
	if suite.Images == target.DefaultImages {
		return path
	}
	return writeManifest(t, readExample(t, dir, name))
}

// readMeshManifest is examples/mesh/<name>'s content with the suite's
// test images in place of the local cluster's.
func readMeshManifest(t *testing.T, name string) string {
	t.Helper()
	return readExample(t, "mesh", name)
}

func readExample(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "examples", dir, name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, img := range [][2]string{{cluster.StaticServerImage, suite.Images.StaticServer}, {cluster.StaticClientImage, suite.Images.StaticClient}} {
		// Written another way, the image would stay the local cluster's
		// and its pods would never start: fail here instead.
		if line := "image: " + img[0] + "\n"; strings.Count(s, img[0]) != strings.Count(s, line) {
			t.Fatalf("examples/%s/%s: expected %s only on \"image: %s\" lines", dir, name, img[0], img[0])
		}
		s = strings.ReplaceAll(s, "image: "+img[0]+"\n", "image: "+img[1]+"\n")
	}
	return s
}

// consulCLI runs the consul CLI against the suite's Consul agent: args are
// the subcommand (two words, e.g. intention create) and its arguments.
func consulCLI(args ...string) (string, error) {
	cmd := exec.Command(tools.consul, args...)
	cmd.Env = append(os.Environ(), suite.ConsulEnv()...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// helmTemplate renders a chart with `helm template`: on the local cluster
// through its helm (and helm's state there), elsewhere with the helm
// runExternal found and throwaway state, so no repository or plugin of the
// user's leaks in.
func helmTemplate(t *testing.T, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	args = append([]string{"template"}, args...)
	if lc != nil {
		return lc.Helm(ctx, args...)
	}
	home := t.TempDir()
	cmd := exec.CommandContext(ctx, tools.helm, args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// TestMeshManifestImages: with other test images (-e2e.static-server-image,
// -e2e.static-client-image), the seed's manifests are applied with those
// in place of the local cluster's, and nothing else changed; with the
// local cluster's own, the files themselves.
func TestMeshManifestImages(t *testing.T) {
	saved := suite.Images
	t.Cleanup(func() { suite.Images = saved })
	suite.Images = target.Images{StaticServer: "registry.example/t/static-server:1", StaticClient: "registry.example/t/static-client:1", Pause: saved.Pause}
	for name, img := range map[string][2]string{
		"static-server.yaml":          {cluster.StaticServerImage, suite.Images.StaticServer},
		"static-client.yaml":          {cluster.StaticClientImage, suite.Images.StaticClient},
		"static-client-upstream.yaml": {cluster.StaticClientImage, suite.Images.StaticClient},
	} {
		orig, err := os.ReadFile(filepath.Join(root, "examples", "mesh", name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(meshManifest(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(got), "image: "+img[1]+"\n") || strings.ReplaceAll(string(got), img[1], img[0]) != string(orig) {
			t.Errorf("%s with image %s:\n%s\nwant the file with only its image %s replaced", name, img[1], got, img[0])
		}
	}
	suite.Images = target.DefaultImages
	if got, want := meshManifest(t, "static-server.yaml"), filepath.Join(root, "examples", "mesh", "static-server.yaml"); got != want {
		t.Errorf("with the local cluster's images: %s, want the file itself, %s", got, want)
	}
}
