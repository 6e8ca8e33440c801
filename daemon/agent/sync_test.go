package agent

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	capi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/meshlet/meshlet/contract"
)

// fakeConsul is a Consul agent's service table. The real Consul agent's
// behaviour is tested on the local cluster (test/e2e/agent_test.go); this
// one records calls so each decision of the syncer can be checked.
type fakeConsul struct {
	services map[string]*capi.AgentServiceRegistration
	checks   map[string]string // check ID → status
	calls    []string
	fail     error
}

func newFakeConsul() *fakeConsul {
	return &fakeConsul{services: map[string]*capi.AgentServiceRegistration{}, checks: map[string]string{}}
}

func (f *fakeConsul) ServiceRegisterOpts(r *capi.AgentServiceRegistration, _ capi.ServiceRegisterOpts) error {
	f.calls = append(f.calls, "register "+r.ID)
	if f.fail != nil {
		return f.fail
	}
	f.services[r.ID] = r
	if r.Check != nil {
		f.checks[r.Check.CheckID] = r.Check.Status
	}
	return nil
}

func (f *fakeConsul) ServiceDeregisterOpts(id string, _ *capi.QueryOptions) error {
	f.calls = append(f.calls, "deregister "+id)
	if _, ok := f.services[id]; !ok {
		return capi.StatusError{Code: 404, Body: "Unknown service ID " + id}
	}
	delete(f.services, id)
	return nil
}

func (f *fakeConsul) UpdateTTLOpts(id, _, status string, _ *capi.QueryOptions) error {
	f.calls = append(f.calls, "ttl "+id+" "+status)
	if _, ok := f.checks[id]; !ok {
		return capi.StatusError{Code: 404, Body: "Unknown check ID " + id}
	}
	f.checks[id] = status
	return nil
}

func (f *fakeConsul) ServicesWithFilterOpts(filter string, _ *capi.QueryOptions) (map[string]*capi.AgentService, error) {
	f.calls = append(f.calls, "list")
	if filter != managedFilter {
		return nil, fmt.Errorf("unexpected filter %q", filter)
	}
	out := map[string]*capi.AgentService{}
	for id, r := range f.services {
		if r.Meta[contract.MetaManagedBy] == contract.ManagedBy {
			out[id] = &capi.AgentService{ID: id, Service: r.Name, Meta: r.Meta}
		}
	}
	return out, nil
}

func (f *fakeConsul) takeCalls() []string {
	c := f.calls
	f.calls = nil
	return c
}

type fixture struct {
	consul   *fakeConsul
	pods     cache.Indexer
	services cache.Indexer
	events   *record.FakeRecorder
	requeued []string
	s        *Syncer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		consul:   newFakeConsul(),
		pods:     cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}),
		services: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}),
		events:   record.NewFakeRecorder(10),
	}
	f.s = &Syncer{Consul: f.consul, Pods: corelisters.NewPodLister(f.pods), Services: corelisters.NewServiceLister(f.services),
		Events: f.events, Metrics: NewMetrics(prometheus.NewRegistry()), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Requeue: func(k string) { f.requeued = append(f.requeued, k) }}
	if err := f.services.Add(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, ClusterIP: "10.96.0.20", Ports: []corev1.ServicePort{{Port: 80}}}}); err != nil {
		t.Fatal(err)
	}
	return f
}

func injected(name, uid string, ready bool) *corev1.Pod {
	enc, err := contract.Registration{Port: 8080, DataPlane: "consul", TransparentProxy: true}.Encode()
	if err != nil {
		panic(err)
	}
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: typesUID(uid), Labels: map[string]string{"app": "web"},
			Annotations: map[string]string{contract.RegistrationKey: enc}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.7",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}},
	}
}

func (f *fixture) put(t *testing.T, p *corev1.Pod) {
	t.Helper()
	if err := f.pods.Update(p); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) reconcile(t *testing.T, key string) {
	t.Helper()
	if err := f.s.Reconcile(key); err != nil {
		t.Fatalf("Reconcile(%s): %v", key, err)
	}
}

func wantCalls(t *testing.T, f *fixture, want ...string) {
	t.Helper()
	if got := f.consul.takeCalls(); !slices.Equal(got, want) {
		t.Fatalf("Consul calls:\n got %q\nwant %q", got, want)
	}
}

const (
	svcID   = "shop_web-1"
	proxyID = "shop_web-1-sidecar-proxy"
	checkID = svcID + contract.HealthCheckSuffix
)

func TestReconcileLifecycle(t *testing.T) {
	f := newFixture(t)
	f.put(t, injected("web-1", "u1", true))
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f, "register "+svcID, "register "+proxyID)
	if got := testutil.ToFloat64(f.s.Metrics.registered); got != 1 {
		t.Fatalf("registered pods gauge %v, want 1", got)
	}
	if got := f.consul.checks[checkID]; got != capi.HealthPassing {
		t.Fatalf("check after registering a Ready pod: %q, want passing", got)
	}
	if v := f.consul.services[proxyID].TaggedAddresses["virtual"].Address; v != "10.96.0.20" {
		t.Fatalf("proxy's virtual address %q, want the Service's ClusterIP", v)
	}

	f.reconcile(t, "shop/web-1")
	wantCalls(t, f) // nothing changed: no request

	f.put(t, injected("web-1", "u1", false))
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f, "ttl "+checkID+" critical") // readiness alone: a TTL update, not a registration
	if got := f.consul.checks[checkID]; got != capi.HealthCritical {
		t.Fatalf("check after the pod turned unready: %q", got)
	}

	f.put(t, injected("web-1", "u1", true))
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f, "ttl "+checkID+" passing")
	p := injected("web-1", "u1", true)
	p.DeletionTimestamp = &metav1.Time{}
	f.put(t, p)
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f, "ttl "+checkID+" critical") // terminating: out of the endpoints while it drains
	p = injected("web-1", "u1", true)
	p.Labels["version"] = "2"
	p.Annotations["consul.hashicorp.com/service-tags"] = "ignored: the registration annotation is what counts"
	p.Status.PodIP = "10.244.0.9"
	f.put(t, p)
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f, "register "+svcID, "register "+proxyID) // a new address: registered again

	if err := f.pods.Delete(p); err != nil {
		t.Fatal(err)
	}
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f, "deregister "+proxyID, "deregister "+svcID)
	if len(f.consul.services) != 0 {
		t.Fatalf("left registered: %v", f.consul.services)
	}
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f) // already gone
}

func TestReconcileSkipsAndProblems(t *testing.T) {
	f := newFixture(t)
	noIP := injected("web-1", "u1", false)
	noIP.Status.PodIP = ""
	f.put(t, noIP)
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f)

	plain := injected("plain", "u2", true)
	delete(plain.Annotations, contract.RegistrationKey)
	f.put(t, plain)
	f.reconcile(t, "shop/plain")
	wantCalls(t, f)

	lone := injected("lone", "u3", true)
	lone.Labels = map[string]string{"app": "nobody-selects-me"}
	f.put(t, lone)
	f.reconcile(t, "shop/lone")
	f.reconcile(t, "shop/lone")
	wantCalls(t, f)
	if got := testutil.ToFloat64(f.s.Metrics.registered); got != 0 {
		t.Fatalf("registered pods gauge %v with only a problem recorded", got)
	}
	if n := len(f.events.Events); n != 1 {
		t.Fatalf("%d Events for one unchanged problem, want 1", n)
	}
	if ev := <-f.events.Events; !strings.Contains(ev, "MeshletRegistrationFailed") || !strings.Contains(ev, "no Kubernetes Service selects the pod") {
		t.Fatalf("Event %q does not name the problem", ev)
	}
	if err := f.pods.Delete(lone); err != nil {
		t.Fatal(err)
	}
	f.reconcile(t, "shop/lone")
	wantCalls(t, f) // a problem record only: nothing to deregister

	done := injected("job-1", "u4", false)
	done.Status.Phase = corev1.PodSucceeded
	f.put(t, done)
	f.reconcile(t, "shop/job-1")
	wantCalls(t, f)
}

func TestReconcileAddedServiceKeepsRegistration(t *testing.T) {
	f := newFixture(t)
	f.put(t, injected("web-1", "u1", true))
	f.reconcile(t, "shop/web-1")
	f.consul.takeCalls()
	if err := f.services.Add(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web-canary", Namespace: "shop"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}}}); err != nil {
		t.Fatal(err)
	}
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f) // ambiguous now, but a serving pod stays in the mesh
	if _, ok := f.consul.services[svcID]; !ok {
		t.Fatal("registration removed when a second Service started selecting the pod")
	}
	if ev := <-f.events.Events; !strings.Contains(ev, "web, web-canary") {
		t.Fatalf("Event %q does not name both Services", ev)
	}
}

func TestResync(t *testing.T) {
	f := newFixture(t)
	f.put(t, injected("web-1", "u1", true))
	f.reconcile(t, "shop/web-1")
	// Left by pods deleted while the node agent was down, or replaced.
	for _, o := range []struct{ pod, uid string }{{"gone", "u9"}, {"web-1", "old-uid"}} {
		id := contract.ServiceID("shop", o.pod) + "-" + o.uid
		f.consul.services[id] = &capi.AgentServiceRegistration{ID: id, Meta: map[string]string{
			contract.MetaManagedBy: contract.ManagedBy, contract.MetaNamespace: "shop", contract.MetaPodName: o.pod, contract.MetaPodUID: o.uid}}
	}
	// Someone else's registration.
	f.consul.services["db"] = &capi.AgentServiceRegistration{ID: "db", Meta: map[string]string{contract.MetaPodName: "gone"}}
	f.consul.takeCalls()

	if err := f.s.Resync(); err != nil {
		t.Fatal(err)
	}
	calls := f.consul.takeCalls()
	slices.Sort(calls)
	if want := []string{"deregister shop_gone-u9", "deregister shop_web-1-old-uid", "list"}; !slices.Equal(calls, want) {
		t.Fatalf("resync calls %q, want %q", calls, want)
	}
	if _, ok := f.consul.services["db"]; !ok {
		t.Fatal("resync removed a registration meshlet does not manage")
	}
	if len(f.requeued) != 0 {
		t.Fatalf("requeued %v with every registration present", f.requeued)
	}

	// The Consul agent restarts and forgets everything.
	f.consul.services, f.consul.checks = map[string]*capi.AgentServiceRegistration{}, map[string]string{}
	if err := f.s.Resync(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.requeued, []string{"shop/web-1"}) {
		t.Fatalf("requeued %v after the Consul agent lost the registrations", f.requeued)
	}
	f.consul.takeCalls()
	f.reconcile(t, "shop/web-1")
	wantCalls(t, f, "register "+svcID, "register "+proxyID)
}

func TestReconcileCheckLost(t *testing.T) {
	f := newFixture(t)
	f.put(t, injected("web-1", "u1", true))
	f.reconcile(t, "shop/web-1")
	f.consul.services, f.consul.checks = map[string]*capi.AgentServiceRegistration{}, map[string]string{}
	f.put(t, injected("web-1", "u1", false))
	if err := f.s.Reconcile("shop/web-1"); err == nil {
		t.Fatal("a TTL update on a check the Consul agent lost succeeded")
	}
	f.consul.takeCalls()
	f.reconcile(t, "shop/web-1") // the queue's retry
	wantCalls(t, f, "register "+svcID, "register "+proxyID)
	if got := f.consul.checks[checkID]; got != capi.HealthCritical {
		t.Fatalf("re-registered check %q, want critical", got)
	}
}

func typesUID(s string) types.UID { return types.UID(s) }

// TestReconcileNamesAfterFirstContainer: a bare pod no Service selects
// and without connect-service (the older Consul documentation's
// walkthrough) is registered under its first container's name, the
// sidecar skipped, with one Normal Event saying so.
func TestReconcileNamesAfterFirstContainer(t *testing.T) {
	f := newFixture(t)
	bare := injected("static-server", "u9", true)
	bare.Labels = map[string]string{"app": "nobody-selects-me"}
	bare.Spec.Containers = []corev1.Container{{Name: contract.MeshletSidecarName}, {Name: "static-server"}, {Name: "logger"}}
	f.put(t, bare)
	f.reconcile(t, "shop/static-server")
	f.reconcile(t, "shop/static-server")
	svcID := contract.ServiceID("shop", "static-server")
	if r, ok := f.consul.services[svcID]; !ok || r.Name != "static-server" {
		t.Fatalf("registered %+v; want service static-server", f.consul.services)
	}
	if n := len(f.events.Events); n != 1 {
		t.Fatalf("%d Events for one registration, want 1", n)
	}
	if ev := <-f.events.Events; !strings.Contains(ev, "Normal MeshletServiceNamedAfterContainer") || !strings.Contains(ev, `registered as service "static-server", its first container's name`) {
		t.Fatalf("Event %q does not say how the service was named", ev)
	}
}
