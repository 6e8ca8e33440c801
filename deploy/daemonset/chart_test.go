// Package daemonset holds the tests of meshlet's Helm chart (this
// directory). They run the repository's bin/helm (make tools builds it) on
// the chart and decode what it renders into Kubernetes' own types.
package daemonset

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/test/golden"
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

func mustTemplate(t testing.TB, valuesFiles ...string) string {
	t.Helper()
	out, err := template(t, valuesFiles...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// rendering is one `helm template` output, decoded.
type rendering struct {
	objects  []runtime.Object
	agent    *appsv1.DaemonSet
	webhook  *appsv1.Deployment
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
			one("Deployment", &r.webhook, o)
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

// TestLint runs `helm lint --strict` with the defaults and every value set.
func TestLint(t *testing.T) {
	files := valueSetFiles(t)
	for _, f := range append([]string{""}, files...) {
		args := []string{"lint", "--strict", ".", "--namespace", namespace}
		name := "defaults"
		if f != "" {
			args, name = append(args, "-f", valueFile(f)), f
		}
		t.Run(name, func(t *testing.T) {
			out, err := helm(t, args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if !strings.Contains(out, "0 chart(s) failed") || strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
				t.Errorf("helm lint:\n%s", out)
			}
		})
	}
}

// defaultWebhookArgs and defaultAgentArgs are what the chart's defaults
// render: every flag of docs/webhook.md's and docs/agent.md's tables that a
// value carries, given explicitly.
var defaultWebhookArgs = []string{"webhook",
	"-tls-self-managed", "-service-name", "meshlet-webhook", "-webhook-config-name", "meshlet-webhook",
	"-tls-secret-name", "meshlet-webhook-tls", "-listen", ":8080",
	"-default-inject=false", "-allow-k8s-namespace", "*",
	"-enable-transparent-proxy=true", "-transparent-proxy-default-overwrite-probes=true",
	"-data-plane", "envoy", "-native-sidecar", "auto",
	"-envoy-image", "envoyproxy/envoy:v1.33.0", "-consul-image", "hashicorp/consul:1.22.0",
	"-meshlet-image", "ghcr.io/meshlet/meshlet:0.1.0",
	"-consul-http-port", "8500", "-consul-grpc-port", "8502",
	"-default-sidecar-proxy-cpu-request", "100m", "-default-sidecar-proxy-cpu-limit", "100m",
	"-default-sidecar-proxy-memory-request", "100Mi", "-default-sidecar-proxy-memory-limit", "100Mi",
	"-default-enable-metrics=false", "-default-enable-metrics-merging=false",
	"-default-merged-metrics-port", "20100", "-default-prometheus-scrape-port", "20200",
	"-default-prometheus-scrape-path", "/metrics",
	"-enable-namespaces=false", "-consul-destination-namespace", "default",
	"-enable-k8s-namespace-mirroring=false", "-k8s-namespace-mirroring-prefix", "",
	"-shutdown-delay", "5s", "-log-level", "info", "-log-json=true"}

var defaultAgentArgs = []string{"agent",
	"-listen", "$(HOST_IP):9402", "-http-addr", "$(HOST_IP):8500", "-enable-namespaces=false",
	"-cni-bin-dir", "/host/opt/cni/bin", "-cni-conf-dir", "/host/etc/cni/net.d",
	"-cni-kubeconfig", "/var/lib/meshlet/meshlet-cni.kubeconfig", "-cni-agent-socket", "/var/run/meshlet/cni.sock",
	"-cni-service-account", "meshlet-cni", "-repair-mode", "auto", "-iptables-mode", "auto",
	"-log-level", "info", "-log-json=true"}

// TestDefaultRendering pins the default rendering (golden file) and checks
// the agent, the webhook and its configuration, object by object, against
// expectations written out here: the reviewed shape the chart renders.
func TestDefaultRendering(t *testing.T) {
	out := mustTemplate(t)
	golden.Check(t, "default.golden.yaml", []byte(out))
	r := decode(t, out)

	// Exactly these objects, namespaced ones in the release namespace.
	var got []string
	for _, o := range r.objects {
		m := o.(metav1.Object)
		kind := reflect.TypeOf(o).Elem().Name()
		got = append(got, fmt.Sprintf("%s %s/%s", kind, m.GetNamespace(), m.GetName()))
	}
	sort.Strings(got)
	want := []string{
		"ClusterRole /meshlet-agent", "ClusterRole /meshlet-cni", "ClusterRole /meshlet-webhook",
		"ClusterRoleBinding /meshlet-agent", "ClusterRoleBinding /meshlet-cni", "ClusterRoleBinding /meshlet-webhook",
		"DaemonSet meshlet/meshlet-agent", "Deployment meshlet/meshlet-webhook",
		"MutatingWebhookConfiguration /meshlet-webhook", "PodDisruptionBudget meshlet/meshlet-webhook",
		"Role meshlet/meshlet-agent", "Role meshlet/meshlet-webhook",
		"RoleBinding meshlet/meshlet-agent", "RoleBinding meshlet/meshlet-webhook",
		"Service meshlet/meshlet-webhook",
		"ServiceAccount meshlet/meshlet-agent", "ServiceAccount meshlet/meshlet-cni", "ServiceAccount meshlet/meshlet-webhook",
	}
	if !slices.Equal(got, want) {
		t.Errorf("objects:%s", diff(want, got))
	}
	if a := r.accounts["meshlet-cni"]; a.AutomountServiceAccountToken == nil || *a.AutomountServiceAccountToken {
		t.Error("meshlet-cni's ServiceAccount mounts its token into pods: no pod runs as it")
	}

	t.Run("agent", func(t *testing.T) { checkDefaultAgent(t, r.agent) })
	t.Run("webhook", func(t *testing.T) { checkDefaultWebhook(t, r) })
	t.Run("webhook configuration", func(t *testing.T) { checkDefaultWebhookConfiguration(t, r.mwc) })
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func hostDir(name, path string) corev1.Volume {
	t := corev1.HostPathDirectoryOrCreate
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &t}}}
}

func checkDefaultAgent(t *testing.T, ds *appsv1.DaemonSet) {
	spec := ds.Spec.Template.Spec
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("the selector %v does not select the pod template's labels %v (%v)", ds.Spec.Selector, ds.Spec.Template.Labels, err)
	}
	// The local cluster's tests find the agent's pods by this label.
	if ds.Spec.Template.Labels["app"] != "meshlet-agent" {
		t.Errorf("pod label app = %q, want meshlet-agent", ds.Spec.Template.Labels["app"])
	}
	if !spec.HostNetwork || !spec.HostPID || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork %v, hostPID %v, dnsPolicy %q: want the host's network and PIDs, ClusterFirstWithHostNet",
			spec.HostNetwork, spec.HostPID, spec.DNSPolicy)
	}
	if spec.ServiceAccountName != "meshlet-agent" || spec.PriorityClassName != "system-node-critical" {
		t.Errorf("serviceAccountName %q, priorityClassName %q", spec.ServiceAccountName, spec.PriorityClassName)
	}
	if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists}}; !reflect.DeepEqual(spec.Tolerations, want) {
		t.Errorf("tolerations:%s", diff(want, spec.Tolerations))
	}
	wantStrategy := appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType,
		RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxUnavailable: ptr.To(intstr.FromInt32(1)), MaxSurge: ptr.To(intstr.FromInt32(0))}}
	if !reflect.DeepEqual(ds.Spec.UpdateStrategy, wantStrategy) {
		t.Errorf("updateStrategy:%s", diff(wantStrategy, ds.Spec.UpdateStrategy))
	}
	c := container(t, spec, "agent")
	if c.Image != "ghcr.io/meshlet/meshlet:0.1.0" || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %q, pull policy %q", c.Image, c.ImagePullPolicy)
	}
	if !slices.Equal(c.Args, defaultAgentArgs) {
		t.Errorf("args:%s", diff(defaultAgentArgs, c.Args))
	}
	wantEnv := []corev1.EnvVar{fieldEnv("NODE_NAME", "spec.nodeName"), fieldEnv("HOST_IP", "status.hostIP"),
		fieldEnv("POD_NAME", "metadata.name"), fieldEnv("POD_NAMESPACE", "metadata.namespace")}
	if !reflect.DeepEqual(c.Env, wantEnv) {
		t.Errorf("env:%s", diff(wantEnv, c.Env))
	}
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged || sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("securityContext %+v: want privileged, as root", sc)
	}
	probe := func(path string) *corev1.HTTPGetAction {
		return &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(9402)}
	}
	if c.ReadinessProbe == nil || !reflect.DeepEqual(c.ReadinessProbe.HTTPGet, probe("/readyz")) ||
		c.LivenessProbe == nil || !reflect.DeepEqual(c.LivenessProbe.HTTPGet, probe("/healthz")) {
		t.Errorf("probes: readiness %+v, liveness %+v: want /readyz and /healthz on 9402", c.ReadinessProbe, c.LivenessProbe)
	}
	wantVolumes := []corev1.Volume{hostDir("cni-bin", "/opt/cni/bin"), hostDir("cni-conf", "/etc/cni/net.d"),
		hostDir("cni-kubeconfig", "/var/lib/meshlet"), hostDir("socket", "/var/run/meshlet")}
	if !reflect.DeepEqual(spec.Volumes, wantVolumes) {
		t.Errorf("volumes:%s", diff(wantVolumes, spec.Volumes))
	}
	wantMounts := []corev1.VolumeMount{{Name: "cni-bin", MountPath: "/host/opt/cni/bin"}, {Name: "cni-conf", MountPath: "/host/etc/cni/net.d"},
		{Name: "cni-kubeconfig", MountPath: "/var/lib/meshlet"}, {Name: "socket", MountPath: "/var/run/meshlet"}}
	if !reflect.DeepEqual(c.VolumeMounts, wantMounts) {
		t.Errorf("volumeMounts:%s", diff(wantMounts, c.VolumeMounts))
	}
	if c.Resources.Requests.Memory().String() != "64Mi" || c.Resources.Limits.Memory().String() != "256Mi" {
		t.Errorf("resources %v", c.Resources)
	}
}

func checkDefaultWebhook(t *testing.T, r rendering) {
	d := r.webhook
	spec := d.Spec.Template.Spec
	if spec.Affinity == nil || spec.Affinity.PodAntiAffinity == nil || len(spec.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Fatalf("affinity %+v: want one preferred pod anti-affinity term", spec.Affinity)
	}
	aff := spec.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution
	podLabels := labels.Set(d.Spec.Template.Labels)
	for what, s := range map[string]*metav1.LabelSelector{
		"Deployment selector": d.Spec.Selector, "PodDisruptionBudget": r.pdb.Spec.Selector,
		"Service":      {MatchLabels: r.service.Spec.Selector},
		"antiAffinity": aff[0].PodAffinityTerm.LabelSelector,
	} {
		sel, err := metav1.LabelSelectorAsSelector(s)
		if err != nil || sel.Empty() || !sel.Matches(podLabels) {
			t.Errorf("%s %v does not select the webhook's pods %v (%v)", what, s, podLabels, err)
		}
	}
	// Nor the agent's pods.
	if sel, _ := metav1.LabelSelectorAsSelector(d.Spec.Selector); sel.Matches(labels.Set(r.agent.Spec.Template.Labels)) {
		t.Error("the webhook's selector selects the agent's pods")
	}
	if *d.Spec.Replicas != 2 {
		t.Errorf("replicas %d", *d.Spec.Replicas)
	}
	wantStrategy := appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
		RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: ptr.To(intstr.FromInt32(0)), MaxSurge: ptr.To(intstr.FromInt32(1))}}
	if !reflect.DeepEqual(d.Spec.Strategy, wantStrategy) {
		t.Errorf("strategy:%s", diff(wantStrategy, d.Spec.Strategy))
	}
	if r.pdb.Spec.MaxUnavailable == nil || *r.pdb.Spec.MaxUnavailable != intstr.FromInt32(1) || r.pdb.Spec.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget %+v: want maxUnavailable 1", r.pdb.Spec)
	}
	if aff[0].PodAffinityTerm.TopologyKey != "kubernetes.io/hostname" || spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		t.Errorf("affinity %+v: want a preferred anti-affinity across nodes", spec.Affinity)
	}
	if spec.ServiceAccountName != "meshlet-webhook" {
		t.Errorf("serviceAccountName %q", spec.ServiceAccountName)
	}
	wantPodSC := &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532), RunAsGroup: ptr.To[int64](65532),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	if !reflect.DeepEqual(spec.SecurityContext, wantPodSC) {
		t.Errorf("pod securityContext:%s", diff(wantPodSC, spec.SecurityContext))
	}
	c := container(t, spec, "webhook")
	if !slices.Equal(c.Args, defaultWebhookArgs) {
		t.Errorf("args:%s", diff(defaultWebhookArgs, c.Args))
	}
	if want := []corev1.EnvVar{fieldEnv("POD_NAMESPACE", "metadata.namespace")}; !reflect.DeepEqual(c.Env, want) {
		t.Errorf("env:%s", diff(want, c.Env))
	}
	wantSC := &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	if !reflect.DeepEqual(c.SecurityContext, wantSC) {
		t.Errorf("securityContext:%s", diff(wantSC, c.SecurityContext))
	}
	if want := []corev1.ContainerPort{{Name: "https", ContainerPort: 8080}}; !reflect.DeepEqual(c.Ports, want) {
		t.Errorf("ports:%s", diff(want, c.Ports))
	}
	probe := func(path string) *corev1.HTTPGetAction {
		return &corev1.HTTPGetAction{Path: path, Port: intstr.FromString("https"), Scheme: corev1.URISchemeHTTPS}
	}
	if c.ReadinessProbe == nil || !reflect.DeepEqual(c.ReadinessProbe.HTTPGet, probe("/readyz")) ||
		c.LivenessProbe == nil || !reflect.DeepEqual(c.LivenessProbe.HTTPGet, probe("/healthz")) {
		t.Errorf("probes: readiness %+v, liveness %+v: want HTTPS /readyz and /healthz", c.ReadinessProbe, c.LivenessProbe)
	}
	wantPorts := []corev1.ServicePort{{Name: "https", Port: 443, TargetPort: intstr.FromString("https")}}
	if !reflect.DeepEqual(r.service.Spec.Ports, wantPorts) {
		t.Errorf("Service ports:%s", diff(wantPorts, r.service.Spec.Ports))
	}
}

// wantWebhook is the webhook the default values must render.
func wantWebhook(svcNamespace, svcName string, notIn []string) admissionregv1.MutatingWebhook {
	return admissionregv1.MutatingWebhook{
		Name: "inject.meshlet.io",
		ClientConfig: admissionregv1.WebhookClientConfig{Service: &admissionregv1.ServiceReference{
			Namespace: svcNamespace, Name: svcName, Path: ptr.To("/mutate"), Port: ptr.To[int32](443)}},
		Rules: []admissionregv1.RuleWithOperations{{
			Operations: []admissionregv1.OperationType{admissionregv1.Create},
			Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"},
				Resources: []string{"pods"}, Scope: ptr.To(admissionregv1.NamespacedScope)},
		}},
		FailurePolicy: ptr.To(admissionregv1.Fail),
		NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
			Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: notIn}}},
		ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
			Key: "meshlet.io/webhook", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"skip"}}}},
		SideEffects:             ptr.To(admissionregv1.SideEffectClassNone),
		AdmissionReviewVersions: []string{"v1"},
		TimeoutSeconds:          ptr.To[int32](10),
		ReinvocationPolicy:      ptr.To(admissionregv1.NeverReinvocationPolicy),
	}
}

func checkDefaultWebhookConfiguration(t *testing.T, mwc *admissionregv1.MutatingWebhookConfiguration) {
	want := []admissionregv1.MutatingWebhook{wantWebhook(namespace, "meshlet-webhook",
		[]string{"kube-system", "kube-public", "kube-node-lease", namespace})}
	if !reflect.DeepEqual(mwc.Webhooks, want) {
		t.Errorf("webhooks:%s", diff(want, mwc.Webhooks))
	}
	// The webhook publishes the caBundle; the template must not hold one
	// (TestUpgradeKeepsCABundle).
	if mwc.Webhooks[0].ClientConfig.CABundle != nil {
		t.Error("the template renders a caBundle")
	}
}

// valueSet is one testdata/values file and what it must change from the
// defaults: flags (nil: the flag is absent), and anything else in check.
type valueSet struct {
	webhookFlags, agentFlags map[string][]string
	noWebhook                bool
	check                    func(t *testing.T, r rendering)
}

var valueSets = map[string]valueSet{
	"defaults.yaml": {},
	"data-plane-meshlet.yaml": {
		webhookFlags: map[string][]string{"data-plane": {"meshlet"}, "meshlet-image": {"registry.example/meshlet/meshlet:v0.2.0"}},
		check: func(t *testing.T, r rendering) {
			for _, img := range []string{container(t, r.agent.Spec.Template.Spec, "agent").Image, container(t, r.webhook.Spec.Template.Spec, "webhook").Image} {
				if img != "registry.example/meshlet/meshlet:v0.2.0" {
					t.Errorf("image %q: the agent and the webhook run meshlet's image too", img)
				}
			}
		},
	},
	"data-plane-consul.yaml": {
		webhookFlags: map[string][]string{"data-plane": {"consul"}, "consul-image": {"registry.example/hashicorp/consul:1.22.1"}},
	},
	"default-inject.yaml": {webhookFlags: map[string][]string{"default-inject": {"true"}}},
	"namespaces.yaml": {
		webhookFlags: map[string][]string{"allow-k8s-namespace": {"shop", "payments"}, "deny-k8s-namespace": {"payments", "legacy"}},
		check: func(t *testing.T, r rendering) {
			want := []metav1.LabelSelectorRequirement{
				{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn,
					Values: []string{"kube-system", "kube-public", "kube-node-lease", namespace, "payments", "legacy"}},
				{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpIn, Values: []string{"shop", "payments"}},
			}
			got := r.mwc.Webhooks[0].NamespaceSelector.MatchExpressions
			if !reflect.DeepEqual(got, want) {
				t.Errorf("namespaceSelector:%s", diff(want, got))
			}
			sel, err := metav1.LabelSelectorAsSelector(r.mwc.Webhooks[0].NamespaceSelector)
			if err != nil {
				t.Fatal(err)
			}
			for ns, sent := range map[string]bool{"shop": true, "payments": false, "legacy": false, "other": false, "kube-system": false} {
				if got := sel.Matches(labels.Set{corev1.LabelMetadataName: ns}); got != sent {
					t.Errorf("namespace %s sent to the webhook: %v, want %v (deny wins)", ns, got, sent)
				}
			}
		},
	},
	"consul-namespaces-mirroring.yaml": {
		webhookFlags: map[string][]string{"enable-namespaces": {"true"}, "enable-k8s-namespace-mirroring": {"true"},
			"k8s-namespace-mirroring-prefix": {"k8s-"}},
		agentFlags: map[string][]string{"enable-namespaces": {"true"}},
	},
	"consul-namespaces-destination.yaml": {
		webhookFlags: map[string][]string{"enable-namespaces": {"true"}, "consul-destination-namespace": {"mesh"}},
		agentFlags:   map[string][]string{"enable-namespaces": {"true"}},
	},
	"transparent-proxy-off.yaml": {
		webhookFlags: map[string][]string{"enable-transparent-proxy": {"false"}, "transparent-proxy-default-overwrite-probes": {"false"}},
	},
	"metrics.yaml": {
		webhookFlags: map[string][]string{"default-enable-metrics": {"true"}, "default-enable-metrics-merging": {"true"},
			"default-merged-metrics-port": {"21100"}, "default-prometheus-scrape-port": {"21200"},
			"default-prometheus-scrape-path": {"/stats/prometheus"}},
	},
	"sidecar-resources.yaml": {
		webhookFlags: map[string][]string{"default-sidecar-proxy-cpu-request": {"1"}, "default-sidecar-proxy-cpu-limit": {""},
			"default-sidecar-proxy-memory-request": {"64Mi"}, "default-sidecar-proxy-memory-limit": {"256Mi"}},
	},
	"tls-acl.yaml": {
		agentFlags: map[string][]string{"http-addr": {"https://$(HOST_IP):8501"}, "ca-file": {"/consul/tls/ca.crt"},
			"tls-server-name": {"client.dc1.consul"}, "token-file": {"/consul/acl/token"}},
		check: func(t *testing.T, r rendering) {
			checkConsulVolumes(t, r, []corev1.Volume{
				{Name: "consul-ca", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "consul-ca-cert",
					Items: []corev1.KeyToPath{{Key: "tls.crt", Path: "ca.crt"}}}}},
				{Name: "consul-token", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "meshlet-agent-acl-token",
					DefaultMode: ptr.To[int32](0o400), Items: []corev1.KeyToPath{{Key: "token", Path: "token"}}}}},
			}, []corev1.VolumeMount{{Name: "consul-ca", MountPath: "/consul/tls", ReadOnly: true},
				{Name: "consul-token", MountPath: "/consul/acl", ReadOnly: true}})
		},
	},
	"tls-ca-configmap.yaml": {
		webhookFlags: map[string][]string{"consul-http-port": {"18500"}, "consul-grpc-port": {"18502"}},
		agentFlags:   map[string][]string{"http-addr": {"https://$(HOST_IP):18501"}, "ca-file": {"/consul/tls/ca.crt"}},
		check: func(t *testing.T, r rendering) {
			checkConsulVolumes(t, r, []corev1.Volume{
				{Name: "consul-ca", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: "consul-ca"},
					Items:                []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}}},
			}, []corev1.VolumeMount{{Name: "consul-ca", MountPath: "/consul/tls", ReadOnly: true}})
		},
	},
	"connect-inject-disabled.yaml": {
		noWebhook: true,
		check: func(t *testing.T, r rendering) {
			if r.webhook != nil || r.service != nil || r.pdb != nil || r.mwc != nil || r.accounts["meshlet-webhook"] != nil {
				t.Error("webhook objects rendered with connectInject.enabled false")
			}
			if r.accounts["meshlet-agent"] == nil || r.accounts["meshlet-cni"] == nil {
				t.Error("the agent's or meshlet-cni's ServiceAccount is missing: the agent stays")
			}
		},
	},
	"webhook-operations.yaml": {
		webhookFlags: map[string][]string{"service-name": {"mesh-webhook"}, "webhook-config-name": {"mesh-webhook"},
			"tls-secret-name": {"mesh-webhook-tls"}, "listen": {":9443"}, "native-sidecar": {"false"},
			"shutdown-delay": {"2s"}, "log-level": {"debug"}, "log-json": {"false"}},
		agentFlags: map[string][]string{"cni-service-account": {"mesh-cni"}, "log-level": {"warn"}, "log-json": {"false"}},
		check: func(t *testing.T, r rendering) {
			d := r.webhook
			spec := d.Spec.Template.Spec
			if d.Name != "mesh-webhook" || r.agent.Name != "mesh-agent" || r.accounts["mesh-cni"] == nil {
				t.Errorf("names %s, %s: want fullnameOverride's mesh-*", d.Name, r.agent.Name)
			}
			if *d.Spec.Replicas != 3 || *r.mwc.Webhooks[0].FailurePolicy != admissionregv1.Ignore {
				t.Errorf("replicas %d, failurePolicy %s", *d.Spec.Replicas, *r.mwc.Webhooks[0].FailurePolicy)
			}
			if s := r.mwc.Webhooks[0].ClientConfig.Service; s.Name != "mesh-webhook" || r.mwc.Name != "mesh-webhook" || r.service.Name != "mesh-webhook" {
				t.Errorf("webhook configuration %s calls Service %s; Service %s", r.mwc.Name, s.Name, r.service.Name)
			}
			if spec.PriorityClassName != "system-cluster-critical" || spec.NodeSelector["kubernetes.io/os"] != "linux" ||
				len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != "dedicated" {
				t.Errorf("scheduling: priorityClassName %q, nodeSelector %v, tolerations %v", spec.PriorityClassName, spec.NodeSelector, spec.Tolerations)
			}
			if a := spec.Affinity.PodAntiAffinity; a.PreferredDuringSchedulingIgnoredDuringExecution != nil || len(a.RequiredDuringSchedulingIgnoredDuringExecution) != 1 {
				t.Errorf("affinity %+v: the value replaces the default", spec.Affinity)
			}
			c := container(t, spec, "webhook")
			if c.Ports[0].ContainerPort != 9443 || c.Resources.Requests.Cpu().String() != "200m" || c.Resources.Limits != nil {
				t.Errorf("port %d, resources %v", c.Ports[0].ContainerPort, c.Resources)
			}
			for _, s := range []corev1.PodSpec{spec, r.agent.Spec.Template.Spec} {
				if want := []corev1.LocalObjectReference{{Name: "regcred"}}; !reflect.DeepEqual(s.ImagePullSecrets, want) {
					t.Errorf("imagePullSecrets %v", s.ImagePullSecrets)
				}
				if s.Containers[0].ImagePullPolicy != corev1.PullAlways {
					t.Errorf("imagePullPolicy %q", s.Containers[0].ImagePullPolicy)
				}
			}
		},
	},
	"cni-dirs-extra-env.yaml": {
		webhookFlags: map[string][]string{"data-plane": {"meshlet"}, "meshlet-image": {"localhost/meshlet/meshlet:dev"}},
		agentFlags: map[string][]string{"listen": {"$(HOST_IP):19402"},
			"cni-kubeconfig": {"/srv/cluster/meshlet/meshlet-cni.kubeconfig"}, "cni-agent-socket": {"/srv/cluster/run/cni.sock"},
			"cni-log-file": {"/srv/cluster/logs/meshlet-cni.log"}, "cni-log-level": {"debug"},
			"repair-mode": {"repair"}, "iptables-mode": {"nft"}, "log-level": {"debug"}},
		check: func(t *testing.T, r rendering) {
			spec := r.agent.Spec.Template.Spec
			wantVolumes := []corev1.Volume{hostDir("cni-bin", "/srv/cluster/cni/bin"), hostDir("cni-conf", "/srv/cluster/cni/net.d"),
				hostDir("cni-kubeconfig", "/srv/cluster/meshlet"), hostDir("socket", "/srv/cluster/run"), hostDir("cni-logs", "/srv/cluster/logs")}
			if !reflect.DeepEqual(spec.Volumes, wantVolumes) {
				t.Errorf("volumes:%s", diff(wantVolumes, spec.Volumes))
			}
			c := container(t, spec, "agent")
			// The CNI dirs where the agent's flags expect them; meshlet's
			// own dirs at the host's path.
			wantMounts := []corev1.VolumeMount{{Name: "cni-bin", MountPath: "/host/opt/cni/bin"}, {Name: "cni-conf", MountPath: "/host/etc/cni/net.d"},
				{Name: "cni-kubeconfig", MountPath: "/srv/cluster/meshlet"}, {Name: "socket", MountPath: "/srv/cluster/run"},
				{Name: "cni-logs", MountPath: "/srv/cluster/logs"}}
			if !reflect.DeepEqual(c.VolumeMounts, wantMounts) {
				t.Errorf("volumeMounts:%s", diff(wantMounts, c.VolumeMounts))
			}
			wantEnv := []corev1.EnvVar{fieldEnv("NODE_NAME", "spec.nodeName"), fieldEnv("HOST_IP", "status.hostIP"),
				fieldEnv("POD_NAME", "metadata.name"), fieldEnv("POD_NAMESPACE", "metadata.namespace"),
				{Name: "KUBERNETES_SERVICE_HOST", Value: "10.244.0.1"}, {Name: "KUBERNETES_SERVICE_PORT", Value: "6443"}}
			if !reflect.DeepEqual(c.Env, wantEnv) {
				t.Errorf("env:%s", diff(wantEnv, c.Env))
			}
			if c.ImagePullPolicy != corev1.PullNever || c.Image != "localhost/meshlet/meshlet:dev" {
				t.Errorf("image %q, pull policy %q", c.Image, c.ImagePullPolicy)
			}
			if c.ReadinessProbe.HTTPGet.Port != intstr.FromInt32(19402) || c.Ports[0].ContainerPort != 19402 {
				t.Errorf("probe port %v, container port %d: want 19402", c.ReadinessProbe.HTTPGet.Port, c.Ports[0].ContainerPort)
			}
			if spec.PriorityClassName != "" || spec.Tolerations != nil || spec.NodeSelector["kubernetes.io/os"] != "linux" ||
				c.Resources.Requests != nil || c.Resources.Limits != nil {
				t.Errorf("priorityClassName %q, tolerations %v, nodeSelector %v, resources %v: want them as set",
					spec.PriorityClassName, spec.Tolerations, spec.NodeSelector, c.Resources)
			}
		},
	},
}

func checkConsulVolumes(t *testing.T, r rendering, extraVolumes []corev1.Volume, extraMounts []corev1.VolumeMount) {
	t.Helper()
	spec := r.agent.Spec.Template.Spec
	if got := spec.Volumes[4:]; !reflect.DeepEqual(got, extraVolumes) {
		t.Errorf("volumes after the host dirs:%s", diff(extraVolumes, got))
	}
	c := container(t, spec, "agent")
	if got := c.VolumeMounts[4:]; !reflect.DeepEqual(got, extraMounts) {
		t.Errorf("volumeMounts after the host dirs:%s", diff(extraMounts, got))
	}
	// The token is a file, never in the environment.
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			t.Errorf("env %s comes from a Secret: the token is mounted as a file", e.Name)
		}
	}
	// Nothing of it reaches the webhook, which has no flag for it.
	w := container(t, r.webhook.Spec.Template.Spec, "webhook")
	if len(r.webhook.Spec.Template.Spec.Volumes) != 0 || len(w.VolumeMounts) != 0 {
		t.Error("the webhook mounts the Consul CA or token")
	}
}

// flags turns args (after the subcommand) into flag → values, in order:
// -name=value (booleans) or -name value.
func flags(t testing.TB, args []string) map[string][]string {
	t.Helper()
	m := map[string][]string{}
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			t.Fatalf("argument %d %q is not a flag: %q", i, a, args)
		}
		name := strings.TrimPrefix(a, "-")
		if n, v, ok := strings.Cut(name, "="); ok {
			m[n] = append(m[n], v)
			continue
		}
		if name == "tls-self-managed" { // the one flag given bare
			m[name] = append(m[name], "true")
			continue
		}
		if i+1 >= len(args) {
			t.Fatalf("flag %s has no value: %q", a, args)
		}
		i++
		m[name] = append(m[name], args[i])
	}
	return m
}

func expectFlags(t *testing.T, defaults []string, overrides map[string][]string) map[string][]string {
	want := flags(t, defaults)
	for k, v := range overrides {
		if v == nil {
			delete(want, k)
		} else {
			want[k] = v
		}
	}
	return want
}

func compareFlags(t *testing.T, what string, got, want map[string][]string) {
	t.Helper()
	var names []string
	for k := range got {
		names = append(names, k)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		if !slices.Equal(got[k], want[k]) {
			t.Errorf("%s -%s: got %q, want %q", what, k, got[k], want[k])
		}
	}
}

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

// TestValueSets renders each value set and checks the webhook's and the
// agent's flags exactly (the defaults with the set's changes, nothing
// else), plus what else it must change.
func TestValueSets(t *testing.T) {
	files := valueSetFiles(t)
	for _, f := range files {
		if _, ok := valueSets[f]; !ok {
			t.Errorf("testdata/values/%s has no case in valueSets", f)
		}
	}
	for name, vs := range valueSets {
		t.Run(name, func(t *testing.T) {
			if !slices.Contains(files, name) {
				t.Fatalf("testdata/values/%s is missing", name)
			}
			r := decode(t, mustTemplate(t, valueFile(name)))
			agent := container(t, r.agent.Spec.Template.Spec, "agent")
			compareFlags(t, "agent", flags(t, agent.Args), expectFlags(t, defaultAgentArgs, vs.agentFlags))
			if agent.Args[0] != "agent" {
				t.Errorf("agent args start with %q", agent.Args[0])
			}
			if vs.noWebhook {
				if vs.webhookFlags != nil {
					t.Fatal("a case without the webhook expects webhook flags")
				}
			} else {
				if r.webhook == nil || r.mwc == nil || r.service == nil || r.pdb == nil {
					t.Fatal("webhook objects missing")
				}
				w := container(t, r.webhook.Spec.Template.Spec, "webhook")
				compareFlags(t, "webhook", flags(t, w.Args), expectFlags(t, defaultWebhookArgs, vs.webhookFlags))
				if w.Args[0] != "webhook" {
					t.Errorf("webhook args start with %q", w.Args[0])
				}
			}
			if vs.check != nil {
				vs.check(t, r)
			}
		})
	}
}

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

// TestSchemaRejects: values.schema.json and the templates' own checks turn
// a wrong value into a failed render that names it.
func TestSchemaRejects(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		want         []string
	}{
		{"misspelt key", "connectInject:\n  defualt: true\n", []string{"/connectInject", "'defualt' not allowed"}},
		{"misspelt top-level key", "connectinject:\n  default: true\n", []string{"'connectinject' not allowed"}},
		{"wrong type", "connectInject:\n  default: \"yes\"\n", []string{"/connectInject/default", "want boolean"}},
		{"bad data plane", "connectInject:\n  dataPlane: istio\n", []string{"/connectInject/dataPlane", "'envoy', 'consul', 'meshlet'"}},
		{"bad failure policy", "connectInject:\n  failurePolicy: fail\n", []string{"/connectInject/failurePolicy", "'Fail', 'Ignore'"}},
		{"bad pull policy", "image:\n  pullPolicy: always\n", []string{"/image/pullPolicy", "'IfNotPresent'"}},
		{"port out of range", "agent:\n  port: 70000\n", []string{"/agent/port", "maximum"}},
		{"port of wrong type", "consul:\n  httpPort: \"8500\"\n", []string{"/consul/httpPort", "want integer"}},
		{"metrics inherit marker", "connectInject:\n  metrics:\n    defaultEnabled: \"-\"\n", []string{"/connectInject/metrics/defaultEnabled", "want boolean"}},
		{"deny every namespace", "connectInject:\n  k8sDenyNamespaces: [\"*\"]\n", []string{"/connectInject/k8sDenyNamespaces/0"}},
		{"empty allow list", "connectInject:\n  k8sAllowNamespaces: []\n", []string{"/connectInject/k8sAllowNamespaces", "minItems"}},
		{"relative CNI dir", "agent:\n  cni:\n    binDir: opt/cni/bin\n", []string{"/agent/cni/binDir", "does not match pattern"}},
		{"bad quantity", "connectInject:\n  sidecarProxy:\n    resources:\n      limits:\n        memory: lots\n",
			[]string{"/connectInject/sidecarProxy/resources/limits/memory", "'lots'"}},
		{"bad log level", "global:\n  logLevel: trace\n", []string{"/global/logLevel"}},
		{"unknown toleration field", "agent:\n  tolerations:\n    - operator: Exists\n      efect: NoSchedule\n", []string{"/agent/tolerations/0", "'efect' not allowed"}},
		{"envoyExtraArgs", "connectInject:\n  envoyExtraArgs: \"--log-level debug\"\n",
			[]string{"connectInject.envoyExtraArgs", "no flag", "consul.hashicorp.com/envoy-extra-args"}},
		{"two CA sources", "consul:\n  tls:\n    enabled: true\n    caCert:\n      secretName: a\n      configMapName: b\n",
			[]string{"consul.tls.caCert", "not both"}},
		{"CA without TLS", "consul:\n  tls:\n    caCert:\n      secretName: a\n", []string{"consul.tls.enabled is false"}},
		{"kubeconfig in the conf dir", "agent:\n  cni:\n    kubeconfigDir: /etc/cni/net.d/meshlet\n",
			[]string{"/etc/cni/net.d/meshlet is inside the CNI conf dir"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := template(t, writeValues(t, tc.values))
			if err == nil {
				t.Fatalf("rendered:\n%.500s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestRBAC lists every rule and binding the chart grants, for every value
// set, against this table: any widening fails.
func TestRBAC(t *testing.T) {
	agent := []string{
		`ClusterRole meshlet-agent: apiGroups [""] resources [pods] verbs [get list watch delete]`,
		`ClusterRole meshlet-agent: apiGroups [""] resources [services] verbs [list watch]`,
		`ClusterRole meshlet-agent: apiGroups [""] resources [events] verbs [create patch]`,
		`Role meshlet/meshlet-agent: apiGroups [""] resources [serviceaccounts/token] resourceNames [meshlet-cni] verbs [create]`,
		`Role meshlet/meshlet-agent: apiGroups ["apps"] resources [daemonsets] resourceNames [meshlet-agent] verbs [get list watch]`,
		`ClusterRoleBinding meshlet-agent: ClusterRole meshlet-agent to ServiceAccount meshlet/meshlet-agent`,
		`RoleBinding meshlet/meshlet-agent: Role meshlet-agent to ServiceAccount meshlet/meshlet-agent`,
		`ClusterRole meshlet-cni: apiGroups [""] resources [pods] verbs [get]`,
		`ClusterRoleBinding meshlet-cni: ClusterRole meshlet-cni to ServiceAccount meshlet/meshlet-cni`,
	}
	webhook := []string{
		`ClusterRole meshlet-webhook: apiGroups ["admissionregistration.k8s.io"] resources [mutatingwebhookconfigurations] resourceNames [meshlet-webhook] verbs [get patch]`,
		`Role meshlet/meshlet-webhook: apiGroups [""] resources [secrets] resourceNames [meshlet-webhook-tls] verbs [get update]`,
		`Role meshlet/meshlet-webhook: apiGroups [""] resources [secrets] verbs [create]`,
		`ClusterRoleBinding meshlet-webhook: ClusterRole meshlet-webhook to ServiceAccount meshlet/meshlet-webhook`,
		`RoleBinding meshlet/meshlet-webhook: Role meshlet-webhook to ServiceAccount meshlet/meshlet-webhook`,
	}
	for _, name := range valueSetFiles(t) {
		t.Run(name, func(t *testing.T) {
			out := mustTemplate(t, valueFile(name))
			r := decode(t, out)
			want := slices.Concat(agent, webhook)
			if r.webhook == nil {
				want = agent
			}
			got := grants(r.objects)
			// fullnameOverride renames, and grants nothing else.
			if prefix := strings.TrimSuffix(r.agent.Name, "-agent"); prefix != "meshlet" {
				for i, g := range got {
					got[i] = strings.ReplaceAll(g, prefix+"-", "meshlet-")
				}
			}
			sort.Strings(got)
			want = slices.Clone(want)
			sort.Strings(want)
			if !slices.Equal(got, want) {
				t.Errorf("grants:%s", diff(want, got))
			}
		})
	}
}

// grants is every rule and binding, one line each.
func grants(objs []runtime.Object) []string {
	rule := func(owner string, r rbacv1.PolicyRule) string {
		var groups []string
		for _, g := range r.APIGroups {
			groups = append(groups, fmt.Sprintf("%q", g))
		}
		s := fmt.Sprintf("%s: apiGroups [%s] resources %v", owner, strings.Join(groups, " "), r.Resources)
		if len(r.ResourceNames) > 0 {
			s += fmt.Sprintf(" resourceNames %v", r.ResourceNames)
		}
		if len(r.NonResourceURLs) > 0 {
			s += fmt.Sprintf(" nonResourceURLs %v", r.NonResourceURLs)
		}
		return s + fmt.Sprintf(" verbs %v", r.Verbs)
	}
	binding := func(kind, name string, ref rbacv1.RoleRef, subjects []rbacv1.Subject) string {
		var subs []string
		for _, s := range subjects {
			subs = append(subs, fmt.Sprintf("%s %s/%s", s.Kind, s.Namespace, s.Name))
		}
		return fmt.Sprintf("%s %s: %s %s to %s", kind, name, ref.Kind, ref.Name, strings.Join(subs, ", "))
	}
	var out []string
	for _, o := range objs {
		switch o := o.(type) {
		case *rbacv1.ClusterRole:
			if o.AggregationRule != nil {
				out = append(out, "ClusterRole "+o.Name+": aggregated")
			}
			for _, r := range o.Rules {
				out = append(out, rule("ClusterRole "+o.Name, r))
			}
		case *rbacv1.Role:
			for _, r := range o.Rules {
				out = append(out, rule("Role "+o.Namespace+"/"+o.Name, r))
			}
		case *rbacv1.ClusterRoleBinding:
			out = append(out, binding("ClusterRoleBinding", o.Name, o.RoleRef, o.Subjects))
		case *rbacv1.RoleBinding:
			out = append(out, binding("RoleBinding", o.Namespace+"/"+o.Name, o.RoleRef, o.Subjects))
		}
	}
	return out
}

// TestUpgradeKeepsCABundle runs the merge `helm upgrade` makes of the
// MutatingWebhookConfiguration (helm.sh/helm/v3/pkg/kube's createPatch: a
// three-way strategic merge of the previous release's manifest, the new
// one and the live object) on a live object whose caBundle the webhook has
// published, and checks the patched object keeps it while taking the new
// settings.
func TestUpgradeKeepsCABundle(t *testing.T) {
	mwcJSON := func(manifest string) []byte {
		t.Helper()
		for _, doc := range docSeparator.Split(manifest, -1) {
			if strings.Contains(doc, "\nkind: MutatingWebhookConfiguration\n") {
				j, err := yaml.YAMLToJSONStrict([]byte(doc))
				if err != nil {
					t.Fatal(err)
				}
				return j
			}
		}
		t.Fatal("no MutatingWebhookConfiguration rendered")
		return nil
	}
	previous := mwcJSON(mustTemplate(t))
	next := mwcJSON(mustTemplate(t, writeValues(t, "connectInject:\n  failurePolicy: Ignore\n  k8sDenyNamespaces: [legacy]\n")))

	// The live object: the previous manifest as the API server keeps it,
	// with the caBundle a webhook replica patched in.
	ca := []byte("-----BEGIN CERTIFICATE-----\npublished by the webhook\n-----END CERTIFICATE-----\n")
	var live admissionregv1.MutatingWebhookConfiguration
	if _, _, err := strictDecoder.Decode(previous, nil, &live); err != nil {
		t.Fatal(err)
	}
	live.Webhooks[0].ClientConfig.CABundle = ca
	live.Webhooks[0].MatchPolicy = ptr.To(admissionregv1.Equivalent) // an API server default
	liveJSON, err := runtime.Encode(scheme.Codecs.LegacyCodec(admissionregv1.SchemeGroupVersion), &live)
	if err != nil {
		t.Fatal(err)
	}

	upgraded := threeWayMerge(t, previous, next, liveJSON)
	w := upgraded.Webhooks[0]
	if !bytes.Equal(w.ClientConfig.CABundle, ca) {
		t.Errorf("helm upgrade dropped the published caBundle: %q", w.ClientConfig.CABundle)
	}
	if *w.FailurePolicy != admissionregv1.Ignore || !slices.Contains(w.NamespaceSelector.MatchExpressions[0].Values, "legacy") {
		t.Errorf("the upgrade did not apply the new settings: failurePolicy %s, namespaceSelector %v", *w.FailurePolicy, w.NamespaceSelector)
	}

	// What the merge would do had the previous manifest held a caBundle
	// (a template that copies the live one with lookup, then a rollback to a
	// manifest without it, or with an older one): the field is removed.
	// This is why the template holds none, and shows this test can fail.
	var withCA admissionregv1.MutatingWebhookConfiguration
	if _, _, err := strictDecoder.Decode(previous, nil, &withCA); err != nil {
		t.Fatal(err)
	}
	withCA.Webhooks[0].ClientConfig.CABundle = ca
	previousWithCA, err := runtime.Encode(scheme.Codecs.LegacyCodec(admissionregv1.SchemeGroupVersion), &withCA)
	if err != nil {
		t.Fatal(err)
	}
	if rolled := threeWayMerge(t, previousWithCA, next, liveJSON); rolled.Webhooks[0].ClientConfig.CABundle != nil {
		t.Error("a caBundle held by the previous manifest and not the next survived the merge: the check above proves nothing")
	}
}

func threeWayMerge(t *testing.T, original, modified, current []byte) admissionregv1.MutatingWebhookConfiguration {
	t.Helper()
	// As Helm: patch metadata from the typed object, overwrite true.
	meta, err := strategicpatch.NewPatchMetaFromStruct(&admissionregv1.MutatingWebhookConfiguration{})
	if err != nil {
		t.Fatal(err)
	}
	patch, err := strategicpatch.CreateThreeWayMergePatch(original, modified, current, meta, true)
	if err != nil {
		t.Fatal(err)
	}
	merged, err := strategicpatch.StrategicMergePatch(current, patch, &admissionregv1.MutatingWebhookConfiguration{})
	if err != nil {
		t.Fatal(err)
	}
	var out admissionregv1.MutatingWebhookConfiguration
	if _, _, err := strictDecoder.Decode(merged, nil, &out); err != nil {
		t.Fatalf("%v\n%s", err, merged)
	}
	return out
}
