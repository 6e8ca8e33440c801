package daemonset

import (
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// valueSet is one testdata/values file and what it must change from the
// defaults: flags (nil: the flag is absent), and anything else in check.
type valueSet struct {
	webhookFlags, agentFlags map[string][]string
	noWebhook                bool
	reaper                   bool // the token reaper is rendered
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
		// Consul's built-in proxy: transparent proxy and probe rewriting
		// off, whatever the values.
		webhookFlags: map[string][]string{"data-plane": {"consul"}, "consul-image": {"registry.example/hashicorp/consul:1.22.1"},
			"enable-transparent-proxy": {"false"}, "transparent-proxy-default-overwrite-probes": {"false"}},
		check: func(t *testing.T, r rendering) {
			if n := notes(t, "testdata/values/data-plane-consul.yaml"); !strings.Contains(n, "transparent proxy and probe rewriting are off for its pods") {
				t.Errorf("the notes do not say transparent proxy is off with data plane consul:\n%s", n)
			}
		},
	},
	"seed-newer.yaml": {
		check: func(t *testing.T, r rendering) {
			if n := notes(t, "testdata/values/seed-newer.yaml"); !strings.Contains(n, "meshlet does not run consul-k8s' CRD controller") {
				t.Errorf("the notes do not say what meshlet does with controller.enabled:\n%s", n)
			}
		},
	},
	"default-inject.yaml": {webhookFlags: map[string][]string{"default-inject": {"true"}}},
	"dns-redirection.yaml": {
		webhookFlags: map[string][]string{"enable-consul-dns": {"true"}},
		check: func(t *testing.T, r rendering) {
			n := notes(t, "testdata/values/dns-redirection.yaml")
			for _, want := range []string{"every injected pod's DNS (UDP and TCP port 53) goes to Consul DNS at\nthe ClusterIP of Service consul/consul-dns",
				"must recurse every other name to the\ncluster DNS (recursors"} {
				if !strings.Contains(n, want) {
					t.Errorf("the notes do not say %q:\n%s", want, n)
				}
			}
		},
	},
	"dns-cluster-ip.yaml": {
		webhookFlags: map[string][]string{"enable-consul-dns": {"true"}, "consul-dns-ip": {"10.96.0.53"}, "consul-dns-service": nil},
	},
	"dns-disabled.yaml": {
		webhookFlags: map[string][]string{"consul-dns-service": nil},
		check: func(t *testing.T, r rendering) {
			if n := notes(t, "testdata/values/dns-disabled.yaml"); strings.Contains(n, "Consul DNS") {
				t.Errorf("the notes speak of Consul DNS with dns.enabled false:\n%s", n)
			}
		},
	},
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
	// consul-k8s' values with ACLs: the agent makes the official chart's
	// cross-namespace policy a default of the namespaces it creates.
	"consul-namespaces-acls.yaml": {
		webhookFlags: map[string][]string{"data-plane": {"meshlet"}, "node-agent-port": {"9402"}, "enable-namespaces": {"true"},
			"enable-k8s-namespace-mirroring": {"true"}, "acl-auth-method": {"consul-k8s-auth-method"}},
		agentFlags: map[string][]string{"enable-namespaces": {"true"}, "consul-cross-namespace-acl-policy": {"cross-namespace-policy"}},
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
	"acl-auth-method.yaml": {
		webhookFlags: map[string][]string{"data-plane": {"meshlet"}, "meshlet-image": {"registry.example/meshlet/meshlet:v0.2.0"},
			"acl-auth-method": {"consul-k8s-auth-method"}, "node-agent-port": {"9402"}},
	},
	// consul-k8s' names; TestConsulK8sSecureValues compares the whole
	// rendering with meshlet's own names.
	"consul-k8s-secure.yaml": {
		webhookFlags: map[string][]string{"data-plane": {"meshlet"}, "acl-auth-method": {"consul-k8s-auth-method"},
			"node-agent-port": {"9402"}, "consul-https-port": {"8501"}, "consul-grpc-tls-port": {"8503"}, "consul-ca-file": {"/consul/tls/ca.crt"}},
		agentFlags: map[string][]string{"http-addr": {"https://$(HOST_IP):8501"}, "ca-file": {"/consul/tls/ca.crt"}},
	},
	"envoy-secure.yaml": {
		webhookFlags: map[string][]string{"acl-auth-method": {"consul-k8s-auth-method"},
			"node-agent-port": {"9402"}, "consul-https-port": {"8501"}, "consul-grpc-tls-port": {"8503"}, "consul-ca-file": {"/consul/tls/ca.crt"}},
		agentFlags: map[string][]string{"http-addr": {"https://$(HOST_IP):8501"}, "ca-file": {"/consul/tls/ca.crt"}},
	},
	"consul-secure.yaml": {
		webhookFlags: map[string][]string{"data-plane": {"consul"}, "acl-auth-method": {"consul-k8s-auth-method"},
			"enable-transparent-proxy": {"false"}, "transparent-proxy-default-overwrite-probes": {"false"},
			"node-agent-port": {"9402"}, "consul-https-port": {"8501"}, "consul-grpc-tls-port": {"8503"}, "consul-ca-file": {"/consul/tls/ca.crt"}},
		agentFlags: map[string][]string{"http-addr": {"https://$(HOST_IP):8501"}, "ca-file": {"/consul/tls/ca.crt"}},
	},
	"tls-meshlet.yaml": {
		webhookFlags: map[string][]string{"data-plane": {"meshlet"}, "meshlet-image": {"registry.example/meshlet/meshlet:v0.2.0"},
			"consul-https-port": {"8501"}, "consul-grpc-tls-port": {"8503"}, "consul-ca-file": {"/consul/tls/ca.crt"}, "consul-tls-server-name": {"client.dc1.consul"}},
		agentFlags: map[string][]string{"http-addr": {"https://$(HOST_IP):8501"}, "ca-file": {"/consul/tls/ca.crt"},
			"tls-server-name": {"client.dc1.consul"}},
		check: func(t *testing.T, r rendering) {
			ca := corev1.Volume{Name: "consul-ca", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "consul-ca"}, Items: []corev1.KeyToPath{{Key: "ca.pem", Path: "ca.crt"}}}}}
			mount := corev1.VolumeMount{Name: "consul-ca", MountPath: "/consul/tls", ReadOnly: true}
			// The webhook reads the CA to hand it to the sidecars.
			spec := r.webhook.Spec.Template.Spec
			if !reflect.DeepEqual(spec.Volumes, []corev1.Volume{ca}) {
				t.Errorf("webhook volumes:%s", diff([]corev1.Volume{ca}, spec.Volumes))
			}
			if got := container(t, spec, "webhook").VolumeMounts; !reflect.DeepEqual(got, []corev1.VolumeMount{mount}) {
				t.Errorf("webhook volumeMounts:%s", diff([]corev1.VolumeMount{mount}, got))
			}
			if got := r.agent.Spec.Template.Spec.Volumes[4:]; !reflect.DeepEqual(got, []corev1.Volume{ca}) {
				t.Errorf("agent volumes after the host dirs:%s", diff([]corev1.Volume{ca}, got))
			}
		},
	},
	"tls-acl.yaml": {
		// Data plane envoy (the default) gets TLS too: gRPC TLS, the CA.
		webhookFlags: map[string][]string{"consul-https-port": {"8501"}, "consul-grpc-tls-port": {"8503"},
			"consul-ca-file": {"/consul/tls/ca.crt"}, "consul-tls-server-name": {"client.dc1.consul"}},
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
	"connect-roots.yaml": {
		webhookFlags: map[string][]string{"data-plane": {"meshlet"}, "acl-auth-method": {"consul-k8s-auth-method"}, "node-agent-port": {"9402"},
			"consul-https-port": {"8501"}, "consul-grpc-tls-port": {"8503"}, "consul-ca-file": {"/consul/tls/ca.crt"},
			"consul-server-addr": {"consul-server.consul.svc:8501"}, "consul-server-tls-server-name": {"server.dc1.consul"}},
		agentFlags: map[string][]string{"http-addr": {"https://$(HOST_IP):8501"}, "ca-file": {"/consul/tls/ca.crt"},
			"token-file":         {"/consul/acl/token"},
			"consul-server-addr": {"consul-server.consul.svc:8501"}, "consul-server-tls-server-name": {"server.dc1.consul"}},
		reaper: true,
		check: func(t *testing.T, r rendering) {
			args := container(t, r.reaper.Spec.Template.Spec, "reaper").Args
			if i := slices.Index(args, "-consul-server-addr"); i < 0 || i+1 >= len(args) || args[i+1] != "consul-server.consul.svc:8501" {
				t.Errorf("reaper args %q: want -consul-server-addr consul-server.consul.svc:8501", args)
			}
		},
	},
	"acl-reaper.yaml": {
		webhookFlags: map[string][]string{"data-plane": {"meshlet"}, "meshlet-image": {"registry.example/meshlet/meshlet:v0.2.0"},
			"acl-auth-method": {"consul-k8s-auth-method"}, "node-agent-port": {"9402"}, "consul-https-port": {"8501"}, "consul-grpc-tls-port": {"8503"}, "consul-ca-file": {"/consul/tls/ca.crt"},
			"consul-tls-server-name": {"client.dc1.consul"}},
		agentFlags: map[string][]string{"http-addr": {"https://$(HOST_IP):8501"}, "ca-file": {"/consul/tls/ca.crt"},
			"tls-server-name": {"client.dc1.consul"}, "token-file": {"/consul/acl/token"}},
		reaper: true,
		check: func(t *testing.T, r rendering) {
			checkReaper(t, r, reaperWant{
				args: []string{"reaper", "-auth-method", "consul-k8s-auth-method", "-listen", ":9403",
					"-http-addr", "https://$(HOST_IP):8501", "-ca-file", "/consul/tls/ca.crt", "-tls-server-name", "client.dc1.consul",
					"-token-file", "/consul/acl/token", "-interval", "1m", "-grace", "10s", "-namespace", namespace,
					"-lease-name", "meshlet-token-reaper", "-log-level", "debug", "-log-json=true"},
				image: "registry.example/meshlet/meshlet:v0.2.0", tokenSecret: "meshlet-token-reaper-acl-token", tokenKey: "acl-token",
				ca: &corev1.Volume{Name: "consul-ca", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "consul-ca-cert",
					Items: []corev1.KeyToPath{{Key: "tls.crt", Path: "ca.crt"}}}}},
				nodeSelector: map[string]string{"kubernetes.io/os": "linux"},
			})
		},
	},
	"tls-ca-configmap.yaml": {
		webhookFlags: map[string][]string{"consul-http-port": {"18500"}, "consul-grpc-port": {"18502"},
			"consul-https-port": {"18501"}, "consul-grpc-tls-port": {"8503"}, "consul-ca-file": {"/consul/tls/ca.crt"}},
		agentFlags: map[string][]string{"http-addr": {"https://$(HOST_IP):18501"}, "ca-file": {"/consul/tls/ca.crt"}},
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
	// The webhook gets the CA, which it hands the sidecars, and never the
	// token.
	w := container(t, r.webhook.Spec.Template.Spec, "webhook")
	for _, v := range r.webhook.Spec.Template.Spec.Volumes {
		if v.Name != "consul-ca" {
			t.Errorf("the webhook mounts volume %s: only the Consul CA may reach it", v.Name)
		}
	}
	for _, m := range w.VolumeMounts {
		if m.Name != "consul-ca" || m.MountPath != "/consul/tls" {
			t.Errorf("the webhook mounts %s at %s: only the Consul CA may reach it", m.Name, m.MountPath)
		}
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
			if (r.reaper != nil) != vs.reaper {
				t.Errorf("token reaper rendered: %v, want %v", r.reaper != nil, vs.reaper)
			}
			if vs.check != nil {
				vs.check(t, r)
			}
		})
	}
}
