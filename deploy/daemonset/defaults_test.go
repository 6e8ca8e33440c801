package daemonset

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"testing"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/test/golden"
)

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
	"-enable-consul-dns=false", "-consul-dns-service", "consul/consul-dns",
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
