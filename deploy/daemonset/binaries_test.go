package daemonset

import (
	"context"
	"errors"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/test/repobin"
)

// sampleEnv is what the downward API gives the containers' env here.
var sampleEnv = map[string]string{"spec.nodeName": "node-1", "status.hostIP": "10.0.0.7",
	"metadata.name": "meshlet-pod-x", "metadata.namespace": namespace}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expand does what kubelet does with a container's env and args: $(VAR)
// becomes the value of an env var defined in the container.
func expand(t *testing.T, c corev1.Container) (env, args []string) {
	t.Helper()
	vals := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			f := e.ValueFrom.FieldRef
			if f == nil || sampleEnv[f.FieldPath] == "" {
				t.Fatalf("env %s: no sample for %+v", e.Name, e.ValueFrom)
			}
			v = sampleEnv[f.FieldPath]
		}
		vals[e.Name] = v
		env = append(env, e.Name+"="+v)
	}
	for _, a := range c.Args {
		a = varRef.ReplaceAllStringFunc(a, func(ref string) string {
			if v, ok := vals[ref[2:len(ref)-1]]; ok {
				return v
			}
			t.Errorf("%s: no env var for %s in the container", a, ref)
			return ref
		})
		args = append(args, a)
	}
	return env, args
}

// TestBinariesAcceptRenderedArgs runs every value set's rendered args
// through bin/meshlet, with the container's env as kubelet would set it, up
// to the point where the binary needs the API server: the flags must parse
// and pass the checks made at start (booleans as -flag=value, numbers,
// quantities, addresses, the self-managed certificate's names). A flag the
// chart invents, or one a binary renames, fails here.
func TestBinariesAcceptRenderedArgs(t *testing.T) {
	bin := repobin.Need(t, "meshlet", "make build")
	const kubeconfig = "/nonexistent/meshlet-chart-test/kubeconfig"
	for _, name := range valueSetFiles(t) {
		t.Run(name, func(t *testing.T) {
			r := decode(t, mustTemplate(t, valueFile(name)))
			cs := []corev1.Container{container(t, r.agent.Spec.Template.Spec, "agent")}
			if r.webhook != nil {
				cs = append(cs, container(t, r.webhook.Spec.Template.Spec, "webhook"))
			}
			for _, c := range cs {
				env, args := expand(t, c)
				if slices.Contains(args, "-kubeconfig") {
					t.Fatalf("%s: the chart passes -kubeconfig: in-cluster config expected", c.Name)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				cmd := exec.CommandContext(ctx, bin, append(args, "-kubeconfig", kubeconfig)...)
				cmd.Env = env
				out, err := cmd.CombinedOutput()
				cancel()
				var exit *exec.ExitError
				if !errors.As(err, &exit) {
					t.Fatalf("%s: %v (want it to stop at the missing kubeconfig)\n%s", c.Name, err, out)
				}
				if want := "kubernetes client config: stat " + kubeconfig; !strings.Contains(string(out), want) {
					t.Errorf("meshlet %s refused the rendered args before reaching the API server (want %q):\n%s\nargs: %q",
						c.Name, want, out, args)
				}
			}
		})
	}
}
