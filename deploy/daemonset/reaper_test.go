package daemonset

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// reaperWant is what a value set's token reaper must be.
type reaperWant struct {
	args                   []string
	image                  string
	tokenSecret, tokenKey  string
	ca                     *corev1.Volume // nil: no CA mounted
	nodeSelector           map[string]string
	replicas               int32 // 0: the default, 2
	requestsCPU, limitsMem string
}

// checkReaper checks the token reaper's Deployment whole: a non-root pod
// on the pod network that reaches the node's Consul agent at $(HOST_IP),
// with its own token as a 0400 file, never in its environment.
func checkReaper(t *testing.T, r rendering, w reaperWant) {
	t.Helper()
	d := r.reaper
	if d == nil {
		t.Fatal("no token reaper rendered")
	}
	if d.Name != "meshlet-token-reaper" || d.Namespace != namespace {
		t.Errorf("Deployment %s/%s", d.Namespace, d.Name)
	}
	if w.replicas == 0 {
		w.replicas = 2
	}
	if *d.Spec.Replicas != w.replicas {
		t.Errorf("replicas %d, want %d", *d.Spec.Replicas, w.replicas)
	}
	spec := d.Spec.Template.Spec
	podLabels := labels.Set(d.Spec.Template.Labels)
	for what, s := range map[string]*metav1.LabelSelector{"Deployment selector": d.Spec.Selector,
		"antiAffinity": spec.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.LabelSelector} {
		sel, err := metav1.LabelSelectorAsSelector(s)
		if err != nil || !sel.Matches(podLabels) {
			t.Errorf("%s %v does not select the reaper's pods %v (%v)", what, s, podLabels, err)
		}
		for name, other := range map[string]map[string]string{"agent": r.agent.Spec.Template.Labels, "webhook": r.webhook.Spec.Template.Labels} {
			if sel.Matches(labels.Set(other)) {
				t.Errorf("%s %v selects the %s's pods", what, s, name)
			}
		}
	}
	if spec.ServiceAccountName != "meshlet-token-reaper" || r.accounts["meshlet-token-reaper"] == nil {
		t.Errorf("serviceAccountName %q, or no such ServiceAccount rendered", spec.ServiceAccountName)
	}
	if spec.HostNetwork || spec.HostPID {
		t.Error("the reaper runs on the host's network or PIDs")
	}
	wantPodSC := &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532), RunAsGroup: ptr.To[int64](65532),
		FSGroup: ptr.To[int64](65532), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	if !reflect.DeepEqual(spec.SecurityContext, wantPodSC) {
		t.Errorf("pod securityContext:%s", diff(wantPodSC, spec.SecurityContext))
	}
	if !reflect.DeepEqual(spec.NodeSelector, w.nodeSelector) {
		t.Errorf("nodeSelector %v, want %v", spec.NodeSelector, w.nodeSelector)
	}
	c := container(t, spec, "reaper")
	if c.Image != w.image {
		t.Errorf("image %q, want %q", c.Image, w.image)
	}
	if !slices.Equal(c.Args, w.args) {
		t.Errorf("args:%s", diff(w.args, c.Args))
	}
	wantEnv := []corev1.EnvVar{fieldEnv("HOST_IP", "status.hostIP"), fieldEnv("POD_NAME", "metadata.name")}
	if !reflect.DeepEqual(c.Env, wantEnv) {
		t.Errorf("env:%s", diff(wantEnv, c.Env))
	}
	wantSC := &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	if !reflect.DeepEqual(c.SecurityContext, wantSC) {
		t.Errorf("securityContext:%s", diff(wantSC, c.SecurityContext))
	}
	probe := func(path string) *corev1.HTTPGetAction {
		return &corev1.HTTPGetAction{Path: path, Port: intstr.FromString("http")}
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "http" || c.Ports[0].ContainerPort != 9403 ||
		c.ReadinessProbe == nil || !reflect.DeepEqual(c.ReadinessProbe.HTTPGet, probe("/readyz")) ||
		c.LivenessProbe == nil || !reflect.DeepEqual(c.LivenessProbe.HTTPGet, probe("/healthz")) {
		t.Errorf("ports %v, probes %+v %+v: want /readyz and /healthz on port http, 9403", c.Ports, c.ReadinessProbe, c.LivenessProbe)
	}
	if w.requestsCPU == "" {
		w.requestsCPU, w.limitsMem = "10m", "256Mi"
	}
	if c.Resources.Requests.Cpu().String() != w.requestsCPU || c.Resources.Limits.Memory().String() != w.limitsMem {
		t.Errorf("resources %v", c.Resources)
	}
	token := corev1.Volume{Name: "consul-token", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
		SecretName: w.tokenSecret, DefaultMode: ptr.To[int32](0o400), Items: []corev1.KeyToPath{{Key: w.tokenKey, Path: "token"}}}}}
	wantVolumes := []corev1.Volume{token}
	wantMounts := []corev1.VolumeMount{{Name: "consul-token", MountPath: "/consul/acl", ReadOnly: true}}
	if w.ca != nil {
		wantVolumes = []corev1.Volume{*w.ca, token}
		wantMounts = append([]corev1.VolumeMount{{Name: "consul-ca", MountPath: "/consul/tls", ReadOnly: true}}, wantMounts...)
	}
	if !reflect.DeepEqual(spec.Volumes, wantVolumes) {
		t.Errorf("volumes:%s", diff(wantVolumes, spec.Volumes))
	}
	if !reflect.DeepEqual(c.VolumeMounts, wantMounts) {
		t.Errorf("volumeMounts:%s", diff(wantMounts, c.VolumeMounts))
	}
	// The reaper's token is not the node agent's.
	for _, v := range r.agent.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == w.tokenSecret {
			t.Errorf("the node agent mounts the reaper's token Secret %s", w.tokenSecret)
		}
	}
}

// notes renders NOTES.txt with the values files: helm template leaves it
// out and helm install needs a cluster, so a copy of the chart carries it
// as a template of its own.
func notes(t *testing.T, valuesFiles ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "chart")
	if err := os.CopyFS(dir, os.DirFS(".")); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(dir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("notes: |\n")
	for _, l := range strings.SplitAfter(string(src), "\n") {
		if strings.TrimSpace(l) != "" {
			b.WriteString("  ")
		}
		b.WriteString(l)
	}
	if err := os.WriteFile(filepath.Join(dir, "templates", "notes-as-yaml.yaml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"template", release, dir, "--namespace", namespace, "--show-only", "templates/notes-as-yaml.yaml"}
	for _, f := range valuesFiles {
		abs, err := filepath.Abs(f)
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "-f", abs)
	}
	out, err := helm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Notes string }
	if err := yaml.Unmarshal([]byte(out), &doc); err != nil || doc.Notes == "" {
		t.Fatalf("rendered notes %q: %v", out, err)
	}
	return doc.Notes
}

// TestReaperRendering: the token reaper is rendered only with both an auth
// method to reap and its own token; with an auth method and no token the
// install's notes warn that tokens will leak, and the render does not fail
// (whoever runs their own cleanup can install). Without TLS it reaches the
// node's Consul agent on the plain HTTP port.
func TestReaperRendering(t *testing.T) {
	const warning = "WARNING: consul.acl.reaper.tokenSecret.name is empty, so no token reaper runs"
	for _, tc := range []struct {
		name, values string
		reaper       bool
		notes        string // in the notes; "" with reaper false: no warning
	}{
		{name: "auth method without the reaper token warns",
			values: "connectInject:\n  dataPlane: meshlet\nconsul:\n  acl:\n    authMethod: k8s\n", notes: warning},
		{name: "the reaper token without an auth method reaps nothing",
			values: "consul:\n  acl:\n    reaper:\n      tokenSecret:\n        name: reaper-token\n"},
		{name: "both over plain HTTP", reaper: true,
			values: "connectInject:\n  dataPlane: meshlet\nconsul:\n  httpPort: 18500\n  acl:\n    authMethod: k8s\n" +
				"    reaper:\n      tokenSecret:\n        name: reaper-token\n      replicas: 3\n      resources:\n        requests:\n          cpu: 50m\n        limits:\n          memory: 1Gi\n",
			notes: "The token reaper (meshlet-token-reaper, a Deployment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			values := writeValues(t, tc.values)
			r := decode(t, mustTemplate(t, values))
			if (r.reaper != nil) != tc.reaper || (r.accounts["meshlet-token-reaper"] != nil) != tc.reaper {
				t.Fatalf("token reaper Deployment rendered: %v, ServiceAccount: %v; want %v",
					r.reaper != nil, r.accounts["meshlet-token-reaper"] != nil, tc.reaper)
			}
			if tc.reaper {
				checkReaper(t, r, reaperWant{
					args: []string{"reaper", "-auth-method", "k8s", "-listen", ":9403", "-http-addr", "$(HOST_IP):18500",
						"-token-file", "/consul/acl/token", "-interval", "30s", "-grace", "5s", "-namespace", namespace,
						"-lease-name", "meshlet-token-reaper", "-log-level", "info", "-log-json=true"},
					image: "ghcr.io/meshlet/meshlet:0.1.0", tokenSecret: "reaper-token", tokenKey: "token",
					replicas: 3, requestsCPU: "50m", limitsMem: "1Gi",
				})
			}
			n := notes(t, values)
			if tc.notes != "" && !strings.Contains(n, tc.notes) {
				t.Errorf("the notes do not say %q:\n%s", tc.notes, n)
			}
			if (tc.notes == warning) != strings.Contains(n, warning) {
				t.Errorf("the notes warn of leaked tokens: %v, want %v:\n%s", strings.Contains(n, warning), tc.notes == warning, n)
			}
		})
	}
	// The default install neither reaps nor warns.
	if n := notes(t); strings.Contains(n, "reaper") {
		t.Errorf("the default notes mention the reaper:\n%s", n)
	}
}
