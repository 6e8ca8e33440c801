package daemonset

import (
	"strings"
	"testing"
)

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

// TestSchemaRejects: values.schema.json and the templates' own checks turn
// a wrong value into a failed render that names it.
// TestConsulK8sSecureValues: a consul-k8s values file's TLS and ACL
// settings, in consul-k8s' names, render exactly what meshlet's own
// consul.* values for the same Consul render.
func TestConsulK8sSecureValues(t *testing.T) {
	got := mustTemplate(t, valueFile("consul-k8s-secure.yaml"))
	want := mustTemplate(t, writeValues(t, `connectInject:
  dataPlane: meshlet
consul:
  tls:
    enabled: true
    caCert:
      secretName: consul-ca-cert
      key: tls.crt
  acl:
    authMethod: consul-k8s-auth-method
`))
	if got != want {
		t.Errorf("consul-k8s' names render differently from meshlet's:\n%s", diff(want, got))
	}
	for _, w := range []string{"-acl-auth-method", "consul-k8s-auth-method", "https://$(HOST_IP):8501", "secretName: consul-ca-cert", "key: tls.crt"} {
		if !strings.Contains(got, w) {
			t.Errorf("the rendering lacks %q", w)
		}
	}
}

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
		{"auth method with spaces", "consul:\n  acl:\n    authMethod: \" meshlet \"\n", []string{"/consul/acl/authMethod", "does not match pattern"}},
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
		{"auth method with data plane envoy and regular containers", "connectInject:\n  nativeSidecar: \"false\"\nconsul:\n  acl:\n    authMethod: k8s\n", []string{`consul.acl.authMethod "k8s" with connectInject.dataPlane envoy and connectInject.nativeSidecar false`, "only native sidecars"}},
		{"misspelt reaper key", "consul:\n  acl:\n    reaper:\n      intervall: 1m\n", []string{"/consul/acl/reaper", "'intervall' not allowed"}},
		{"reaper without replicas", "consul:\n  acl:\n    reaper:\n      replicas: 0\n", []string{"/consul/acl/reaper/replicas", "minimum"}},
		{"reaper interval not a duration", "consul:\n  acl:\n    reaper:\n      interval: 30\n", []string{"/consul/acl/reaper/interval", "want string"}},
		{"reaper grace not a duration", "consul:\n  acl:\n    reaper:\n      grace: 5 seconds\n", []string{"/consul/acl/reaper/grace", "does not match pattern"}},
		{"consul-k8s CA and meshlet's differ", "connectInject:\n  dataPlane: meshlet\nglobal:\n  tls:\n    enabled: true\n    caCert:\n      secretName: a\nconsul:\n  tls:\n    caCert:\n      secretName: b\n",
			[]string{`global.tls.caCert.secretName "a" and consul.tls.caCert.secretName "b"`}},
		{"consul-k8s auth method and meshlet's differ", "connectInject:\n  dataPlane: meshlet\n  overrideAuthMethodName: xx\nconsul:\n  acl:\n    authMethod: yy\n",
			[]string{`auth method "xx"`, `consul.acl.authMethod "yy" differ`}},
		{"manageSystemACLs with data plane envoy and regular containers", "connectInject:\n  nativeSidecar: \"false\"\nglobal:\n  acls:\n    manageSystemACLs: true\n",
			[]string{`consul.acl.authMethod "consul-k8s-auth-method" with connectInject.dataPlane envoy and connectInject.nativeSidecar false`}},
		{"misspelt consul-k8s TLS key", "global:\n  tls:\n    enableAutoEncrypted: true\n", []string{"/global/tls", "'enableAutoEncrypted' not allowed"}},
		{"cross-namespace policy without namespaces", "consul:\n  acl:\n    crossNamespacePolicy: cross-namespace-policy\n",
			[]string{`consul.acl.crossNamespacePolicy "cross-namespace-policy" is set but global.enableConsulNamespaces is false`}},
		{"Consul DNS redirection not a boolean", "dns:\n  enableRedirection: \"yes\"\n", []string{"/dns/enableRedirection"}},
		{"misspelt Consul DNS key", "dns:\n  enabeRedirection: true\n", []string{"/dns", "'enabeRedirection' not allowed"}},
		{"Consul DNS address not an IP", "dns:\n  clusterIP: consul-dns.consul\n", []string{"/dns/clusterIP", "does not match pattern"}},
		{"Consul DNS Service not namespace/name", "consul:\n  dns:\n    service: consul-dns\n", []string{"/consul/dns/service", "does not match pattern"}},
		{"Consul DNS with data plane consul", "connectInject:\n  dataPlane: consul\ndns:\n  enableRedirection: true\n",
			[]string{"dns.enableRedirection true with connectInject.dataPlane consul", "no transparent proxy"}},
		{"Consul DNS redirection without Consul DNS", "dns:\n  enabled: false\n  enableRedirection: true\n",
			[]string{"dns.enableRedirection true with dns.enabled false"}},
		{"Consul DNS address without Consul DNS", "dns:\n  enabled: false\n  clusterIP: 10.96.0.53\n",
			[]string{`dns.clusterIP "10.96.0.53" is set but dns.enabled is false`}},
		{"Consul DNS redirection without transparent proxy", "connectInject:\n  transparentProxy:\n    defaultEnabled: false\ndns:\n  enableRedirection: true\n",
			[]string{"dns.enableRedirection true with connectInject.transparentProxy.defaultEnabled false"}},
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
