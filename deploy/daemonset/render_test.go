// Package daemonset holds the tests of meshlet's Helm chart (this
// directory). They run the repository's bin/helm (make tools builds it) on
// the chart and decode what it renders into Kubernetes' own types.
package daemonset

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/test/repobin"
)

// The release every test renders: named like the local cluster's objects
// (meshlet-agent, meshlet-webhook, meshlet-cni in namespace meshlet).
const (
	release   = "meshlet"
	namespace = "meshlet"
)

// helm runs bin/helm in the chart's directory; the error carries stderr.
func helm(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, repobin.Need(t, "helm", "make tools"), args...)
	// No repository or plugin configuration of the user's leaks in.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// template renders the chart with the given values files.
func template(t testing.TB, valuesFiles ...string) (string, error) {
	t.Helper()
	args := []string{"template", release, ".", "--namespace", namespace}
	for _, f := range valuesFiles {
		args = append(args, "-f", f)
	}
	return helm(t, args...)
}

// renders keeps each rendering mustTemplate made, by its values files:
// several tests check the same value set (TestValueSets,
// TestBinariesAcceptRenderedArgs, TestRBAC) or the defaults, and helm
// renders the same chart with the same files the same way, so one
// `helm template` per set and test binary serves them all.
var renders = struct {
	sync.Mutex
	m map[string]renderResult
}{m: map[string]renderResult{}}

type renderResult struct {
	out string
	err error
}

// mustTemplate is template's output for valuesFiles, rendered on the first
// call and reused after; a failed rendering fails every test that asks
// for it, as it would have failed each of them on its own.
func mustTemplate(t testing.TB, valuesFiles ...string) string {
	t.Helper()
	key := strings.Join(valuesFiles, "\x00")
	renders.Lock()
	defer renders.Unlock()
	r, ok := renders.m[key]
	if !ok {
		// Stored only once helm has run: a test skipped for want of
		// bin/helm stores nothing, and the next one skips too.
		r.out, r.err = template(t, valuesFiles...)
		renders.m[key] = r
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.out
}

// rendering is one `helm template` output, decoded.
type rendering struct {
	objects  []runtime.Object
	agent    *appsv1.DaemonSet
	webhook  *appsv1.Deployment
	reaper   *appsv1.Deployment // the token reaper's
	service  *corev1.Service
	pdb      *policyv1.PodDisruptionBudget
	mwc      *admissionregv1.MutatingWebhookConfiguration
	accounts map[string]*corev1.ServiceAccount
}

var strictDecoder = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeManifest decodes every document strictly: an unknown or
// duplicated field, or a kind client-go does not know, is an error.
func decodeManifest(manifest string) ([]runtime.Object, error) {
	var objs []runtime.Object
	for i, doc := range docSeparator.Split(manifest, -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		j, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		obj, _, err := strictDecoder.Decode(j, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w\n%s", i, err, doc)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func decode(t testing.TB, manifest string) rendering {
	t.Helper()
	objs, err := decodeManifest(manifest)
	if err != nil {
		t.Fatal(err)
	}
	r := rendering{objects: objs, accounts: map[string]*corev1.ServiceAccount{}}
	one := func(kind string, dst, v any) {
		if !reflect.ValueOf(dst).Elem().IsNil() {
			t.Fatalf("two %ss rendered", kind)
		}
		reflect.ValueOf(dst).Elem().Set(reflect.ValueOf(v))
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.DaemonSet:
			one("DaemonSet", &r.agent, o)
		case *appsv1.Deployment:
			if o.Labels["app.kubernetes.io/component"] == "token-reaper" {
				one("token reaper Deployment", &r.reaper, o)
			} else {
				one("Deployment", &r.webhook, o)
			}
		case *corev1.Service:
			one("Service", &r.service, o)
		case *policyv1.PodDisruptionBudget:
			one("PodDisruptionBudget", &r.pdb, o)
		case *admissionregv1.MutatingWebhookConfiguration:
			one("MutatingWebhookConfiguration", &r.mwc, o)
		case *corev1.ServiceAccount:
			r.accounts[o.Name] = o
		case *rbacv1.ClusterRole, *rbacv1.Role, *rbacv1.ClusterRoleBinding, *rbacv1.RoleBinding:
		default:
			t.Fatalf("unexpected object %T", o)
		}
	}
	if r.agent == nil {
		t.Fatal("no agent DaemonSet rendered")
	}
	return r
}

func container(t testing.TB, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

func valueFile(name string) string { return filepath.Join("testdata", "values", name) }

// valueSetFiles are the files under testdata/values.
func valueSetFiles(t testing.TB) []string {
	t.Helper()
	m, err := filepath.Glob(valueFile("*.yaml"))
	if err != nil || len(m) == 0 {
		t.Fatalf("no value sets under testdata/values (%v)", err)
	}
	var names []string
	for _, p := range m {
		names = append(names, filepath.Base(p))
	}
	return names
}

// writeValues writes a values file for one test.
func writeValues(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func diff(want, got any) string {
	w, _ := yaml.Marshal(want)
	g, _ := yaml.Marshal(got)
	return fmt.Sprintf("\n got:\n%s\nwant:\n%s", g, w)
}

func TestStrictDecodingRefusesUnknownFields(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\nautomountToken: false\n",
		"duplicate key": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  name: b\n",
		"unknown kind":  "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: a\n",
	} {
		if _, err := decodeManifest(doc); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	if _, err := decodeManifest("# only a comment\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n"); err != nil {
		t.Errorf("a valid manifest: %v", err)
	}
}
