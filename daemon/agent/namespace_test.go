package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	capi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/daemon/register"
)

// No Consul Enterprise binary runs here: the node agent's use of
// namespaces is proven at the request level, its real Consul client
// against a recording stand-in for an Enterprise client agent.

// agentRequest is one request the node agent made.
type agentRequest struct {
	method, path, ns string
	hasNS            bool
	body             map[string]any
}

func (r agentRequest) String() string {
	return fmt.Sprintf("%s %s ns=%q (present %v)", r.method, r.path, r.ns, r.hasNS)
}

// enterpriseAgent keeps services and namespaces as an Enterprise client
// agent does: a service is found in its own namespace only.
type enterpriseAgent struct {
	t *testing.T
	// createFails, when set, answers namespace creations with it; raced,
	// the namespace exists all the same (another node's agent made it).
	createFails int
	raced       bool

	mu         sync.Mutex
	reqs       []agentRequest
	namespaces map[string]bool
	services   map[string]capi.AgentServiceRegistration // by namespace/ID
}

func newEnterpriseAgent(t *testing.T) (*enterpriseAgent, *capi.Client) {
	t.Helper()
	t.Setenv("CONSUL_NAMESPACE", "")
	a := &enterpriseAgent{t: t, namespaces: map[string]bool{}, services: map[string]capi.AgentServiceRegistration{}}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	cl, err := capi.NewClient(&capi.Config{Address: srv.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	return a, cl
}

func (a *enterpriseAgent) take() []agentRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.reqs
	a.reqs = nil
	return r
}

func (a *enterpriseAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	raw, _ := io.ReadAll(r.Body)
	rec := agentRequest{method: r.Method, path: r.URL.Path, ns: r.URL.Query().Get("ns"), hasNS: r.URL.Query().Has("ns")}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &rec.body); err != nil {
			a.t.Errorf("%s %s: body %q: %v", r.Method, r.URL, raw, err)
		}
	}
	a.reqs = append(a.reqs, rec)
	answer := func(v any) { _ = json.NewEncoder(w).Encode(v) }
	path := r.URL.Path
	switch {
	case r.Method == http.MethodGet && strings.HasPrefix(path, "/v1/namespace/"):
		name := strings.TrimPrefix(path, "/v1/namespace/")
		if !a.namespaces[name] {
			http.Error(w, "Namespace not found", http.StatusNotFound)
			return
		}
		answer(capi.Namespace{Name: name})
	case r.Method == http.MethodPut && path == "/v1/namespace":
		var ns capi.Namespace
		_ = json.Unmarshal(raw, &ns)
		if a.raced {
			a.namespaces[ns.Name] = true
		}
		if a.createFails != 0 {
			http.Error(w, "Permission denied: token lacks operator:write", a.createFails)
			return
		}
		a.namespaces[ns.Name] = true
		answer(ns)
	case r.Method == http.MethodPut && path == "/v1/agent/service/register":
		var reg capi.AgentServiceRegistration
		_ = json.Unmarshal(raw, &reg)
		if reg.Namespace != "" && !a.namespaces[reg.Namespace] {
			http.Error(w, "namespace not found", http.StatusBadRequest)
			return
		}
		a.services[reg.Namespace+"/"+reg.ID] = reg
	case r.Method == http.MethodPut && strings.HasPrefix(path, "/v1/agent/check/update/"):
		id := strings.TrimSuffix(strings.TrimPrefix(path, "/v1/agent/check/update/"), contract.HealthCheckSuffix)
		if _, ok := a.services[rec.ns+"/"+id]; !ok {
			http.Error(w, "Unknown check ID", http.StatusNotFound)
		}
	case r.Method == http.MethodPut && strings.HasPrefix(path, "/v1/agent/service/deregister/"):
		key := rec.ns + "/" + strings.TrimPrefix(path, "/v1/agent/service/deregister/")
		if _, ok := a.services[key]; !ok {
			http.Error(w, "Unknown service ID", http.StatusNotFound)
			return
		}
		delete(a.services, key)
	case r.Method == http.MethodGet && path == "/v1/agent/services":
		out := map[string]capi.AgentService{}
		for key, s := range a.services {
			if ns, _, _ := strings.Cut(key, "/"); rec.ns == "*" || ns == rec.ns {
				out[s.ID] = capi.AgentService{ID: s.ID, Service: s.Name, Meta: s.Meta, Namespace: s.Namespace}
			}
		}
		answer(out)
	default:
		a.t.Errorf("the node agent asked the Consul agent for %s %s, which this test does not expect", r.Method, r.URL)
		http.NotFound(w, r)
	}
}

// nsSyncer is a Syncer on Consul client cl with the shop namespace's web
// Service; namespaces on or off as the node agent's flags would make it.
func nsSyncer(t *testing.T, cl *capi.Client, namespaces bool) (*Syncer, cache.Indexer, *record.FakeRecorder) {
	t.Helper()
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	services := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := services.Add(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, ClusterIP: "10.96.0.20", Ports: []corev1.ServicePort{{Port: 80}}}}); err != nil {
		t.Fatal(err)
	}
	events := record.NewFakeRecorder(10)
	s := &Syncer{Consul: cl.Agent(), Pods: corelisters.NewPodLister(pods), Services: corelisters.NewServiceLister(services),
		Events: events, Metrics: NewMetrics(prometheus.NewRegistry()), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Requeue: func(string) {}}
	cfg := Config{ConsulNamespaces: namespaces}
	if namespaces {
		cfg.CrossNamespacePolicy = "cross-namespace-policy"
		s.Namespaces = &register.Namespaces{API: cl.Namespaces(), CrossNamespacePolicy: cfg.CrossNamespacePolicy}
	}
	s.ListNamespace = cfg.consulListNamespace()
	return s, pods, events
}

// nsPod is an injected pod of shop whose registration goes to Consul
// namespace consulNS, with an upstream in namespace upNS.
func nsPod(t *testing.T, name, consulNS, upNS string, ready bool) *corev1.Pod {
	t.Helper()
	p := injected(name, name+"-uid", ready)
	enc, err := contract.Registration{Port: 8080, DataPlane: "meshlet", ConsulNamespace: consulNS,
		Upstreams: []contract.Upstream{{Name: "db", Namespace: upNS, LocalPort: 5432}}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	p.Annotations[contract.RegistrationKey] = enc
	return p
}

// TestSyncerConsulNamespaces: with namespaces on, the node agent creates
// the pod's missing Consul namespace once (the cross-namespace policy a
// default of it), registers the service, its TTL check and its proxy
// there, updates the check, lists every namespace and deregisters each
// registration in its own; with them off, no request carries ns= or a
// namespace, which Consul without Enterprise would refuse.
func TestSyncerConsulNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name      string
		on        bool
		ns, upNS  string // the pod's Consul namespace, its upstream's
		listNS    string // what the resync lists
		nsCreated bool
	}{
		{name: "enterprise", on: true, ns: "k8s-shop", upNS: "data", listNS: "*", nsCreated: true},
		{name: "no namespaces"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, cl := newEnterpriseAgent(t)
			s, pods, _ := nsSyncer(t, cl, tc.on)
			reconcile := func(p *corev1.Pod) {
				t.Helper()
				if p != nil {
					if err := pods.Update(p); err != nil {
						t.Fatal(err)
					}
				}
				if err := s.Reconcile("shop/web-1"); err != nil {
					t.Fatalf("Reconcile: %v", err)
				}
			}
			var all []agentRequest
			reconcile(nsPod(t, "web-1", tc.ns, tc.upNS, true))
			first := a.take()
			all = append(all, first...)
			var paths []string
			for _, r := range first {
				paths = append(paths, r.method+" "+r.path)
			}
			want := []string{"PUT /v1/agent/service/register", "PUT /v1/agent/service/register"}
			if tc.nsCreated {
				want = append([]string{"GET /v1/namespace/" + tc.ns, "PUT /v1/namespace"}, want...)
			}
			if !slices.Equal(paths, want) {
				t.Fatalf("first registration: requests %q, want %q", paths, want)
			}
			for _, r := range first {
				switch {
				case r.path == "/v1/namespace":
					acls, _ := r.body["ACLs"].(map[string]any)
					if r.body["Name"] != tc.ns || fmt.Sprint(acls["PolicyDefaults"]) != "[map[ID: Name:cross-namespace-policy]]" {
						t.Errorf("namespace created as %v, want %s with the cross-namespace policy a default", r.body, tc.ns)
					}
				case r.path == "/v1/agent/service/register":
					if got, has := r.body["Namespace"]; has != tc.on || (has && got != tc.ns) {
						t.Errorf("%s %v: Namespace %v, want %q", r, r.body["ID"], got, tc.ns)
					}
					if chk, ok := r.body["Check"].(map[string]any); ok && chk["TTL"] == nil {
						t.Errorf("the service's check %v is not the TTL check the node agent updates", chk)
					}
					if proxy, ok := r.body["Proxy"].(map[string]any); ok {
						up := proxy["Upstreams"].([]any)[0].(map[string]any)
						if got, has := up["DestinationNamespace"]; has != tc.on || (has && got != tc.upNS) {
							t.Errorf("proxy's upstream %v: DestinationNamespace %v, want %q", up, got, tc.upNS)
						}
						if len(r.body["Checks"].([]any)) != 1 {
							t.Errorf("proxy registered without its alias check: %v", r.body["Checks"])
						}
					}
				}
			}

			// A second pod of the namespace: no namespace request again.
			p2 := nsPod(t, "web-2", tc.ns, tc.upNS, true)
			if err := pods.Add(p2); err != nil {
				t.Fatal(err)
			}
			if err := s.Reconcile("shop/web-2"); err != nil {
				t.Fatal(err)
			}
			for _, r := range a.take() {
				all = append(all, r)
				if strings.HasPrefix(r.path, "/v1/namespace") {
					t.Errorf("%s for a namespace already made", r)
				}
			}

			reconcile(nsPod(t, "web-1", tc.ns, tc.upNS, false)) // the TTL check, in the service's namespace
			// A registration of a pod gone while the node agent was down.
			a.mu.Lock()
			a.services[tc.ns+"/shop_gone"] = capi.AgentServiceRegistration{ID: "shop_gone", Name: "web", Namespace: tc.ns,
				Meta: map[string]string{contract.MetaManagedBy: contract.ManagedBy, contract.MetaNamespace: "shop", contract.MetaPodName: "gone", contract.MetaPodUID: "u0"}}
			a.mu.Unlock()
			if err := s.Resync(); err != nil {
				t.Fatal(err)
			}
			if err := pods.Delete(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop"}}); err != nil {
				t.Fatal(err)
			}
			reconcile(nil)
			rest := a.take()
			all = append(all, rest...)
			var kinds []string
			for _, r := range rest {
				kinds = append(kinds, r.method+" "+r.path)
				want := tc.ns
				if r.path == "/v1/agent/services" {
					want = tc.listNS
				}
				if r.ns != want || r.hasNS != (want != "") {
					t.Errorf("%s: want ns=%q", r, want)
				}
			}
			if want := []string{"PUT /v1/agent/check/update/shop_web-1" + contract.HealthCheckSuffix, "GET /v1/agent/services",
				"PUT /v1/agent/service/deregister/shop_gone", "PUT /v1/agent/service/deregister/shop_web-1-sidecar-proxy",
				"PUT /v1/agent/service/deregister/shop_web-1"}; !slices.Equal(kinds, want) {
				t.Errorf("requests %q, want %q", kinds, want)
			}
			a.mu.Lock()
			left := len(a.services)
			a.mu.Unlock()
			if left != 2 {
				t.Errorf("%d registrations left, want web-2's 2", left)
			}
			if !tc.on {
				for _, r := range all {
					if r.hasNS || r.body["Namespace"] != nil {
						t.Errorf("%s with namespaces off: body %v", r, r.body)
					}
				}
			}
		})
	}
}

// TestSyncerNamespaceNotCreated: a namespace the node agent may not
// create leaves the pod unregistered, retried, with a Warning Event on it
// saying what to do; one another node's agent created meanwhile is used.
func TestSyncerNamespaceNotCreated(t *testing.T) {
	a, cl := newEnterpriseAgent(t)
	a.createFails = http.StatusForbidden
	s, pods, events := nsSyncer(t, cl, true)
	if err := pods.Add(nsPod(t, "web-1", "k8s-shop", "", true)); err != nil {
		t.Fatal(err)
	}
	err := s.Reconcile("shop/web-1")
	if err == nil || !strings.Contains(err.Error(), "create Consul namespace k8s-shop") || !strings.Contains(err.Error(), "operator:write") {
		t.Fatalf("Reconcile: %v, want the namespace's creation failed, naming operator:write", err)
	}
	for _, r := range a.take() {
		if r.path == "/v1/agent/service/register" {
			t.Errorf("registered in a namespace that does not exist: %s", r)
		}
	}
	select {
	case ev := <-events.Events:
		if !strings.Contains(ev, "Warning MeshletNamespaceFailed") || !strings.Contains(ev, "k8s-shop") {
			t.Errorf("Event %q does not say the namespace is missing", ev)
		}
	default:
		t.Error("no Event on the pod")
	}

	a.raced = true // the retry: another node's agent creates it first
	if err := s.Reconcile("shop/web-1"); err != nil {
		t.Fatalf("Reconcile with the namespace made meanwhile: %v", err)
	}
	var registered int
	for _, r := range a.take() {
		if r.path == "/v1/agent/service/register" {
			registered++
		}
	}
	if registered != 2 {
		t.Errorf("%d registrations once the namespace exists, want 2", registered)
	}
}
