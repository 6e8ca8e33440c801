package daemonset

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/test/repobin"
	"github.com/meshlet/meshlet/test/testpki"
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

// mounted lays out, in a directory of the test, the files the container's
// Secret and ConfigMap mounts would hold (a CA certificate for a .crt, a
// token otherwise), and points args at them, so that a binary reading a
// mounted file at start reads what the mount gives it.
func mounted(t *testing.T, spec corev1.PodSpec, c corev1.Container, args []string) []string {
	t.Helper()
	for _, m := range c.VolumeMounts {
		var items []corev1.KeyToPath
		for _, v := range spec.Volumes {
			switch {
			case v.Name != m.Name:
			case v.Secret != nil:
				items = v.Secret.Items
			case v.ConfigMap != nil:
				items = v.ConfigMap.Items
			}
		}
		if len(items) == 0 {
			continue
		}
		dir := t.TempDir()
		for _, it := range items {
			content := []byte("sample-token\n")
			if strings.HasSuffix(it.Path, ".crt") {
				content = []byte(testpki.NewCA(t, "sample CA").PEM)
			}
			if err := os.WriteFile(filepath.Join(dir, it.Path), content, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		for i, a := range args {
			if rest, ok := strings.CutPrefix(a, m.MountPath+"/"); ok {
				args[i] = filepath.Join(dir, rest)
			}
		}
	}
	return args
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
			type run struct {
				c    corev1.Container
				spec corev1.PodSpec
			}
			runs := []run{{container(t, r.agent.Spec.Template.Spec, "agent"), r.agent.Spec.Template.Spec}}
			if r.webhook != nil {
				runs = append(runs, run{container(t, r.webhook.Spec.Template.Spec, "webhook"), r.webhook.Spec.Template.Spec})
			}
			if r.reaper != nil {
				runs = append(runs, run{container(t, r.reaper.Spec.Template.Spec, "reaper"), r.reaper.Spec.Template.Spec})
			}
			for _, run := range runs {
				c := run.c
				env, args := expand(t, c)
				args = mounted(t, run.spec, c, args)
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
				if strings.Contains(string(out), `unknown command "`+c.Args[0]+`"`) {
					t.Fatalf("%s has no `meshlet %s`: it predates the chart; make build builds it from this tree", bin, c.Args[0])
				}
				if want := "kubernetes client config: stat " + kubeconfig; !strings.Contains(string(out), want) {
					t.Errorf("meshlet %s refused the rendered args before reaching the API server (want %q):\n%s\nargs: %q",
						c.Name, want, out, args)
				}
			}
		})
	}
}
