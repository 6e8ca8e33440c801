package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/kubeclient/kubeclienttest"
	"github.com/meshlet/meshlet/webhook"
)

func dnsService(mutate ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "consul", Name: "consul-dns"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.53", Ports: []corev1.ServicePort{
			{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP}, {Name: "dns-udp", Port: 53, Protocol: corev1.ProtocolUDP}}}}
	for _, m := range mutate {
		m(s)
	}
	return s
}

// TestConsulDNSService: the address the admissions get is the Consul DNS
// Service's ClusterIP, or none and why, in words a denial can carry.
func TestConsulDNSService(t *testing.T) {
	for _, tc := range []struct {
		name    string
		objects []runtime.Object
		ip, why string
	}{
		{"found", []runtime.Object{dnsService()}, "10.96.0.53", ""},
		{"absent", nil, "", "Service consul/consul-dns, in front of the Consul agents' DNS, does not exist (the official Consul chart creates it with dns.enabled; meshlet's chart names it in consul.dns.service, or gives its address in dns.clusterIP)"},
		{"headless", []runtime.Object{dnsService(func(s *corev1.Service) { s.Spec.ClusterIP = corev1.ClusterIPNone })}, "",
			"Service consul/consul-dns is headless: pods' DNS needs one address, its ClusterIP"},
		{"no UDP 53", []runtime.Object{dnsService(func(s *corev1.Service) { s.Spec.Ports = s.Spec.Ports[:1] })}, "",
			"Service consul/consul-dns has no port 53/UDP, where pods send their DNS"},
		{"another Service's name", []runtime.Object{dnsService(func(s *corev1.Service) { s.Name = "consul-server" })}, "",
			"Service consul/consul-dns, in front of the Consul agents' DNS, does not exist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := newConsulDNS(kubeclienttest.FromClientset(fake.NewClientset(tc.objects...)), "consul/consul-dns", false, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			if ip, why := d.Current(); ip != "" || !strings.Contains(why, "has not been read yet") {
				t.Errorf("before the first read: %q, %q", ip, why)
			}
			d.refresh(context.Background())
			ip, why := d.Current()
			if ip != tc.ip || !strings.HasPrefix(why, tc.why) || (tc.why == "") != (why == "") {
				t.Errorf("Current() = %q, %q; want %q, %q", ip, why, tc.ip, tc.why)
			}
			if got, want := testutil.ToFloat64(d.known), map[bool]float64{true: 1, false: 0}[tc.ip != ""]; got != want {
				t.Errorf("meshlet_webhook_consul_dns_known = %v, want %v", got, want)
			}
		})
	}
}

// TestConsulDNSServiceReadErrors: a failed read keeps an address already
// known (a ClusterIP does not change while its Service lives), says why
// before one is, and a deleted Service takes the address away.
func TestConsulDNSServiceReadErrors(t *testing.T) {
	cs := fake.NewClientset()
	d, err := newConsulDNS(kubeclienttest.FromClientset(cs), "consul/consul-dns", false, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	failing := true
	cs.PrependReactor("get", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failing {
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	ctx := context.Background()
	d.refresh(ctx)
	if ip, why := d.Current(); ip != "" || why != "Service consul/consul-dns could not be read: connection refused" {
		t.Errorf("first read failed: %q, %q", ip, why)
	}
	failing = false
	if _, err := cs.CoreV1().Services("consul").Create(ctx, dnsService(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d.refresh(ctx)
	if ip, _ := d.Current(); ip != "10.96.0.53" {
		t.Fatalf("after the Service came: %q", ip)
	}
	failing = true
	d.refresh(ctx)
	if ip, _ := d.Current(); ip != "10.96.0.53" {
		t.Errorf("a failed read dropped the known address: %q", ip)
	}
	failing = false
	if err := cs.CoreV1().Services("consul").Delete(ctx, "consul-dns", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	d.refresh(ctx)
	if ip, why := d.Current(); ip != "" || !strings.Contains(why, "does not exist") {
		t.Errorf("after the Service went: %q, %q", ip, why)
	}
}

func TestParseServiceRef(t *testing.T) {
	for ref, ok := range map[string]bool{"consul/consul-dns": true, "consul-dns": false, "consul/": false, "/consul-dns": false,
		"Consul/consul-dns": false, "consul/consul.dns": false, "consul/consul-dns/x": false} {
		if _, _, err := parseServiceRef(ref); (err == nil) != ok {
			t.Errorf("parseServiceRef(%q): %v, want ok=%v", ref, err, ok)
		}
	}
}

// TestHandlerConsulDNS: each admission takes the Consul DNS address the
// source holds then: a pod is denied while the Service is missing and
// gets its ClusterIP in the redirect config once it exists.
func TestHandlerConsulDNS(t *testing.T) {
	cs := fake.NewClientset()
	d, err := newConsulDNS(kubeclienttest.FromClientset(cs), "consul/consul-dns", false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	cfg := webhook.DefaultConfig()
	cfg.DataPlane, cfg.MeshletImage = webhook.DataPlaneMeshlet, "localhost/meshlet/meshlet:dev"
	cfg.ConsulDNS.Default = true
	h := &Handler{Config: cfg, ConsulDNS: d, Log: slog.New(slog.DiscardHandler), Metrics: NewMetrics(prometheus.NewRegistry(), cfg.DataPlane)}
	body := reviewBody(t, podKind, admissionv1.Create, testPod(map[string]string{contract.Inject: "true"}))

	ctx := context.Background()
	d.refresh(ctx)
	_, out := post(t, h, body)
	if r := out.Response; r.Allowed || r.Result == nil || !strings.Contains(r.Result.Message, "Service consul/consul-dns, in front of the Consul agents' DNS, does not exist") {
		t.Fatalf("without the Service: %+v, want a denial naming it", r.Result)
	}
	if _, err := cs.CoreV1().Services("consul").Create(ctx, dnsService(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d.refresh(ctx)
	_, out = post(t, h, body)
	if r := out.Response; !r.Allowed || !strings.Contains(string(r.Patch), `\"ConsulDNSIP\":\"10.96.0.53\"`) {
		t.Fatalf("with the Service: allowed %v, patch %s; want the ClusterIP in the redirect config", r.Allowed, r.Patch)
	}
}
