package register

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/golden"
)

func pod(reg *contract.Registration, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-5d9f8c7b6-x2x7q", Namespace: "shop", UID: "1f0c",
			Labels: map[string]string{"app": "web"}, Annotations: map[string]string{}},
		Status: corev1.PodStatus{PodIP: "10.244.0.7", Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	if reg != nil {
		reg.Version = contract.RegistrationVersion
		enc, err := reg.Encode()
		if err != nil {
			panic(err)
		}
		p.Annotations[contract.RegistrationKey] = enc
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func service(name, clusterIP string, selector map[string]string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
		Spec: corev1.ServiceSpec{Selector: selector, ClusterIP: clusterIP, Ports: []corev1.ServicePort{{Port: 80}}}}
}

var web = service("web", "10.96.0.20", map[string]string{"app": "web"})

func TestForGolden(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pod      *corev1.Pod
		services []*corev1.Service
	}{
		{"service-from-kubernetes-service", pod(&contract.Registration{Port: 8080, DataPlane: "envoy", TransparentProxy: true}),
			[]*corev1.Service{web, service("other", "10.96.0.21", map[string]string{"app": "other"})}},
		{"everything", pod(&contract.Registration{Service: "web-api", Port: 8080, DataPlane: "envoy", TransparentProxy: true,
			Upstreams: []contract.Upstream{{Name: "db", LocalPort: 5432}, {Name: "cache", Namespace: "infra", Datacenter: "dc2", LocalPort: 6379},
				{Name: "geo", PreparedQuery: true, LocalPort: 7000}},
			Tags: []string{"v1"}, Meta: map[string]string{"team": "payments"},
			ExposePaths:     []contract.ExposePath{{ListenerPort: 20400, Path: "/ready", LocalPathPort: 8080}},
			Metrics:         &contract.Metrics{ScrapePort: 20200, ScrapePath: "/metrics"},
			ConsulNamespace: "apps"}), []*corev1.Service{web}},
		{"not-ready-no-tproxy", pod(&contract.Registration{Service: "web", Port: 8080, DataPlane: "consul"}, func(p *corev1.Pod) {
			p.Status.Conditions[0].Status = corev1.ConditionFalse
		}), nil},
		{"virtual-from-same-name-service", pod(&contract.Registration{Service: "web", Port: 8080, TransparentProxy: true}),
			[]*corev1.Service{service("all", "10.96.0.30", map[string]string{"app": "web"}), web}},
		{"headless-no-virtual", pod(&contract.Registration{Port: 8080, TransparentProxy: true}),
			[]*corev1.Service{service("web", corev1.ClusterIPNone, map[string]string{"app": "web"})}},
		// With ACLs: the Kubernetes Service is named like the
		// ServiceAccount, so the pod is registered as with no ACLs.
		{"acls-service-named-like-serviceaccount", pod(&contract.Registration{Port: 8080, TransparentProxy: true, AuthMethod: "meshlet-k8s"},
			func(p *corev1.Pod) { p.Spec.ServiceAccountName = "web" }), []*corev1.Service{web}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := For(tc.pod, tc.services)
			if err != nil {
				t.Fatal(err)
			}
			b, err := json.MarshalIndent(r, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, filepath.Join("register", tc.name+".json"), append(b, '\n'))
		})
	}
}

func TestForErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pod      *corev1.Pod
		services []*corev1.Service
		is       error
		want     string
	}{
		{"not injected", pod(nil), nil, ErrNotInjected, ""},
		{"no IP", pod(&contract.Registration{Port: 80}, func(p *corev1.Pod) { p.Status.PodIP = "" }), []*corev1.Service{web}, ErrNoIP, ""},
		{"no Service", pod(&contract.Registration{Port: 80}), nil, nil, "no Kubernetes Service selects the pod"},
		{"Service without selector", pod(&contract.Registration{Port: 80}), []*corev1.Service{service("web", "10.96.0.20", nil)}, nil, "no Kubernetes Service selects"},
		{"two Services", pod(&contract.Registration{Port: 80}),
			[]*corev1.Service{web, service("all", "10.96.0.30", map[string]string{"app": "web"})}, nil, "the Services all, web all select the pod"},
		{"other version", pod(nil, func(p *corev1.Pod) { p.Annotations[contract.RegistrationKey] = `{"version":2}` }), nil, nil, contract.RegistrationKey},
		{"ACLs, a Service not named like the ServiceAccount", pod(&contract.Registration{Port: 80, AuthMethod: "meshlet-k8s"},
			func(p *corev1.Pod) { p.Spec.ServiceAccountName = "static-client" }), []*corev1.Service{web}, ErrIdentity,
			`its Consul service is "web" (the Kubernetes Service selecting it) but its ServiceAccount is "static-client"; with Consul ACLs (auth method meshlet-k8s)`},
		{"ACLs, an annotation not named like the ServiceAccount", pod(&contract.Registration{Service: "static-server", Port: 80, AuthMethod: "meshlet-k8s"},
			func(p *corev1.Pod) { p.Spec.ServiceAccountName = "static-client" }), nil, ErrIdentity,
			`its Consul service is "static-server" (its consul.hashicorp.com/connect-service annotation) but its ServiceAccount is "static-client"`},
		{"ACLs, ServiceAccount default", pod(&contract.Registration{Port: 80, AuthMethod: "meshlet-k8s"}), []*corev1.Service{web}, ErrIdentity,
			`but its ServiceAccount is "default"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := For(tc.pod, tc.services)
			switch {
			case err == nil:
				t.Fatal("no error")
			case tc.is != nil && !errors.Is(err, tc.is):
				t.Fatalf("err %v, want %v", err, tc.is)
			case !strings.Contains(err.Error(), tc.want):
				t.Fatalf("err %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

// The error goes verbatim into the pod's Event and the node agent's log:
// the annotation it is about is named once, whoever names it.
func TestForBadAnnotationNamedOnce(t *testing.T) {
	for name, raw := range map[string]string{
		"not JSON":      `{`,
		"unknown field": `{"version":1,"colour":"blue"}`,
		"other version": `{"version":2}`,
	} {
		t.Run(name, func(t *testing.T) {
			p := pod(nil, func(p *corev1.Pod) { p.Annotations[contract.RegistrationKey] = raw })
			_, err := For(p, []*corev1.Service{web})
			if err == nil {
				t.Fatal("no error")
			}
			if n := strings.Count(err.Error(), contract.RegistrationKey); n != 1 {
				t.Fatalf("err %q names %s %d times, want once", err, contract.RegistrationKey, n)
			}
		})
	}
}

// TestForNamesAfterFirstContainer: with no Service selecting the pod and
// no connect-service annotation, the service takes the pod's first
// container's name (sidecars skipped) and says so in Note; with ACLs that
// name is held to the ServiceAccount like any other.
func TestForNamesAfterFirstContainer(t *testing.T) {
	containers := func(p *corev1.Pod) {
		p.Spec.Containers = []corev1.Container{{Name: contract.MeshletSidecarName}, {Name: "static-server"}}
	}
	regs, err := For(pod(&contract.Registration{Port: 80}, containers), nil)
	if err != nil {
		t.Fatal(err)
	}
	if regs.Service.Name != "static-server" || regs.Proxy.Name != "static-server-sidecar-proxy" ||
		!strings.Contains(regs.Note, `registered as service "static-server", its first container's name`) {
		t.Errorf("service %q, proxy %q, note %q", regs.Service.Name, regs.Proxy.Name, regs.Note)
	}
	if regs, err := For(pod(&contract.Registration{Port: 80}, containers), []*corev1.Service{web}); err != nil || regs.Service.Name != "web" || regs.Note != "" {
		t.Errorf("with a Service selecting the pod: %v, %+v; want the Service's name and no note", err, regs)
	}
	_, err = For(pod(&contract.Registration{Port: 80, AuthMethod: "meshlet-k8s"}, containers, func(p *corev1.Pod) { p.Spec.ServiceAccountName = "static-client" }), nil)
	if !errors.Is(err, ErrIdentity) || !strings.Contains(err.Error(), `"static-server" (its first container's name)`) {
		t.Errorf("ACLs, a container name not the ServiceAccount's: %v", err)
	}
}
