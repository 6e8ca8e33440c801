package dataplane

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/test/testpki"
)

// No Consul Enterprise binary runs here, so the proxy's use of Consul
// Enterprise namespaces is proven at the request level: the proxy runs
// against a recording stand-in for the Consul agent that answers as an
// Enterprise agent would (a namespace's services only with its ns=), and
// every request it made is checked. Without namespaces, the same run
// must send no ns= at all: Consul without Enterprise refuses any
// (docs/proxy.md#consul-enterprise-namespaces). The proxy's behaviour on
// a real Consul is TestProxyThroughConsul's and the others'.

// recordedRequest is one request the proxy made.
type recordedRequest struct {
	method, path string
	ns           string
	hasNS        bool // ns= present, even empty
	nsHeader     string
	token        string
}

func (r recordedRequest) String() string {
	return fmt.Sprintf("%s %s ns=%q (present %v)", r.method, r.path, r.ns, r.hasNS)
}

// enterpriseAgent answers the proxy's Consul calls for one pod: the
// proxy's registration, its leaf and roots, the proxy services of each
// namespace (a namespace's only to its ns=, as an Enterprise agent) and
// their instances, authorizations, login and logout.
type enterpriseAgent struct {
	t        *testing.T
	ca       *testpki.CA
	trust    string
	proxyID  string
	reg      capi.AgentService // the proxy's registration, in namespace reg.Namespace
	services map[string]map[string][]*capi.ServiceEntry
	leaves   map[string]capi.LeafCert // by service, in reg's namespace

	mu   sync.Mutex
	reqs []recordedRequest
}

func (a *enterpriseAgent) requests() []recordedRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.reqs)
}

func (a *enterpriseAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ns, hasNS := q.Get("ns"), q.Has("ns")
	a.mu.Lock()
	a.reqs = append(a.reqs, recordedRequest{method: r.Method, path: r.URL.Path, ns: ns, hasNS: hasNS,
		nsHeader: r.Header.Get("X-Consul-Namespace"), token: r.Header.Get("X-Consul-Token")})
	a.mu.Unlock()
	// A blocking query past the one index this agent has: nothing changes
	// until the proxy gives up the query.
	if q.Get("index") != "" {
		<-r.Context().Done()
		return
	}
	w.Header().Set("X-Consul-Index", "1")
	answer := func(v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	path := r.URL.Path
	switch {
	case r.Method == http.MethodPost && path == "/v1/acl/login":
		answer(capi.ACLToken{AccessorID: "accessor-1", SecretID: "secret-1"})
	case r.Method == http.MethodPost && path == "/v1/acl/logout":
	case r.Method == http.MethodGet && path == "/v1/agent/service/"+a.proxyID:
		// Answered in any namespace (an Enterprise agent would answer 404
		// elsewhere): a proxy that asks wrong still runs, and the test
		// names each wrong request rather than time out.
		answer(a.reg)
	case r.Method == http.MethodGet && path == "/v1/agent/connect/ca/roots":
		answer(capi.CARootList{ActiveRootID: "root-1", TrustDomain: a.trust,
			Roots: []*capi.CARoot{{ID: "root-1", Name: "test root", RootCertPEM: a.ca.PEM, Active: true}}})
	case r.Method == http.MethodGet && strings.HasPrefix(path, "/v1/agent/connect/ca/leaf/"):
		leaf, ok := a.leaves[strings.TrimPrefix(path, "/v1/agent/connect/ca/leaf/")]
		if !ok {
			http.Error(w, "no such service", http.StatusForbidden)
			return
		}
		answer(leaf)
	case r.Method == http.MethodGet && path == "/v1/catalog/services":
		out := map[string][]string{}
		for name := range a.services[ns] {
			out[name] = nil
		}
		answer(out)
	case r.Method == http.MethodGet && strings.HasPrefix(path, "/v1/health/service/"):
		entries := a.services[ns][strings.TrimPrefix(path, "/v1/health/service/")]
		if entries == nil {
			entries = []*capi.ServiceEntry{}
		}
		answer(entries)
	case r.Method == http.MethodPost && path == "/v1/agent/connect/authorize":
		answer(capi.AgentAuthorize{Authorized: true, Reason: "allowed by the test"})
	default:
		a.t.Errorf("the proxy asked the Consul agent for %s %s, which this test does not expect", r.Method, r.URL)
		http.NotFound(w, r)
	}
}

// leaf is a Consul leaf certificate for service in namespace ns.
func (a *enterpriseAgent) leaf(ns, service string) (capi.LeafCert, tls.Certificate) {
	uri := ServiceID{TrustDomain: a.trust, Namespace: ns, Datacenter: "dc1", Service: service}.URI()
	certPEM, keyPEM := a.ca.URILeaf(a.t, uri)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		a.t.Fatal(err)
	}
	return capi.LeafCert{SerialNumber: "01", CertPEM: string(certPEM), PrivateKeyPEM: string(keyPEM), Service: service,
		ServiceURI: uri, ValidAfter: time.Now().Add(-time.Hour), ValidBefore: time.Now().Add(time.Hour)}, cert
}

// sidecarEntry is an instance of service's sidecar proxy at port, in ns.
func sidecarEntry(ns, service string, port int) *capi.ServiceEntry {
	return &capi.ServiceEntry{
		Node: &capi.Node{Node: "node-1", Address: "127.0.0.1", Datacenter: "dc1"},
		Service: &capi.AgentService{Kind: capi.ServiceKindConnectProxy, ID: service + "-1-sidecar-proxy",
			Service: service + "-sidecar-proxy", Address: "127.0.0.1", Port: port, Namespace: ns,
			Proxy: &capi.AgentServiceConnectProxyConfig{DestinationServiceName: service}},
		Checks: capi.HealthChecks{{Status: capi.HealthPassing}},
	}
}

// meshSidecar serves "hello from <service>" over mTLS at a free loopback
// port with cert, the identity a Consul sidecar of the service presents.
func meshSidecar(t *testing.T, service string, cert tls.Certificate) int {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.WriteString(c, "hello from "+service)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestProxyConsulNamespaces: with -consul-namespace, every Consul call the
// proxy makes for its registration, leaf, roots, catalog and
// authorizations carries its namespace, the catalog of an upstream's
// namespace carries that one, and the login and logout the auth method's;
// the upstream in the other namespace is reached, its sidecar's identity
// checked in that namespace. Without it, the same run sends no ns= at all.
func TestProxyConsulNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name              string
		own, up, loginNS  string // Consul namespaces: the proxy's, the upstream's, the auth method's
		args              []string
		upstreamNamespace string // the registration's DestinationNamespace
	}{
		{name: "enterprise", own: "team-a", up: "data", loginNS: "default",
			args: []string{"-consul-namespace", "team-a", "-acl-auth-method-namespace", "default"}, upstreamNamespace: "data"},
		{name: "no namespaces"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &enterpriseAgent{t: t, ca: testpki.NewCA(t, "Consul CA"), trust: "11111111-2222-3333-4444-555555555555.consul",
				proxyID: "shop_web-1-sidecar-proxy", leaves: map[string]capi.LeafCert{}}
			webLeaf, _ := a.leaf(tc.own, "web")
			a.leaves["web"] = webLeaf
			_, dbCert := a.leaf(orDefault(tc.up), "db")
			_, callerCert := a.leaf(tc.own, "frontend")
			dbPort := meshSidecar(t, "db", dbCert)
			public, upPort, metrics := freePort(t), freePort(t), net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
			a.reg = capi.AgentService{Kind: capi.ServiceKindConnectProxy, ID: a.proxyID, Service: "web-sidecar-proxy",
				Port: public, Namespace: tc.own, Datacenter: "dc1",
				Proxy: &capi.AgentServiceConnectProxyConfig{DestinationServiceName: "web", DestinationServiceID: "shop_web-1",
					LocalServiceAddress: "127.0.0.1", LocalServicePort: app(t, "web"),
					Upstreams: []capi.Upstream{{DestinationType: capi.UpstreamDestTypeService, DestinationName: "db",
						DestinationNamespace: tc.upstreamNamespace, LocalBindPort: upPort}}}}
			a.services = map[string]map[string][]*capi.ServiceEntry{
				tc.own: {"web-sidecar-proxy": {sidecarEntry(tc.own, "web", public)}},
			}
			if a.services[tc.up] == nil {
				a.services[tc.up] = map[string][]*capi.ServiceEntry{}
			}
			a.services[tc.up]["db-sidecar-proxy"] = []*capi.ServiceEntry{sidecarEntry(tc.up, "db", dbPort)}
			srv := httptest.NewServer(a)
			t.Cleanup(srv.Close)
			bearer := filepath.Join(t.TempDir(), "token")
			if err := os.WriteFile(bearer, []byte("a ServiceAccount JWT"), 0o600); err != nil {
				t.Fatal(err)
			}

			args := append([]string{"-http-addr", srv.Listener.Addr().String(), "-proxy-id", a.proxyID, "-metrics-addr", metrics,
				"-acl-auth-method", "k8s", "-acl-bearer-token-file", bearer}, tc.args...)
			logs, done, stop := runProxy(t, args)
			waitServing(t, "the proxy to serve", metrics, logs, done)

			// Out to the upstream in its namespace, then in from a caller.
			if got, err := get(net.JoinHostPort("127.0.0.1", strconv.Itoa(upPort))); err != nil || got != "hello from db" {
				t.Errorf("upstream db: got %q, %v; want hello from db\n%s", got, err, logs)
			}
			c, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(public)),
				&tls.Config{Certificates: []tls.Certificate{callerCert}, InsecureSkipVerify: true}) //nolint:gosec // the test's caller, not the check under test
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = io.WriteString(c, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")
			got, _ := io.ReadAll(c)
			c.Close()
			if !strings.HasSuffix(string(got), "hello from web") {
				t.Errorf("inbound: got %q; want hello from web\n%s", got, logs)
			}
			if err := stop(); err != nil {
				t.Fatalf("the proxy: %v\n%s", err, logs)
			}

			// Every call, in the namespace it is about.
			want := func(r recordedRequest) string {
				switch {
				case strings.HasPrefix(r.path, "/v1/acl/"):
					return tc.loginNS
				case r.path == "/v1/health/service/db-sidecar-proxy":
					return tc.up
				case r.path == "/v1/catalog/services" && r.ns == tc.up:
					return tc.up
				}
				return tc.own
			}
			made := map[string]bool{}
			for _, r := range a.requests() {
				made[r.method+" "+r.path+" "+r.ns] = true
				if r.ns != want(r) || r.hasNS != (want(r) != "") || r.nsHeader != "" {
					t.Errorf("%s: want ns=%q (and no X-Consul-Namespace, here %q)", r, want(r), r.nsHeader)
				}
				if r.path != "/v1/acl/login" && r.token != "secret-1" {
					t.Errorf("%s: token %q, want the login's", r, r.token)
				}
			}
			for _, call := range []string{
				"POST /v1/acl/login " + tc.loginNS,
				"GET /v1/agent/service/" + a.proxyID + " " + tc.own,
				"GET /v1/agent/connect/ca/roots " + tc.own,
				"GET /v1/agent/connect/ca/leaf/web " + tc.own,
				"GET /v1/catalog/services " + tc.own,
				"GET /v1/catalog/services " + tc.up,
				"GET /v1/health/service/web-sidecar-proxy " + tc.own,
				"GET /v1/health/service/db-sidecar-proxy " + tc.up,
				"POST /v1/agent/connect/authorize " + tc.own,
				"POST /v1/acl/logout " + tc.loginNS,
			} {
				if !made[call] {
					t.Errorf("the proxy did not call %s; it made:\n%v", call, a.requests())
				}
			}
		})
	}
}

// TestProxyNamespaceOnConsulWithoutThem: -consul-namespace against a real
// Consul without Enterprise, which refuses every ns=: the proxy stops at
// once saying so, rather than poll for a registration it cannot read.
func TestProxyNamespaceOnConsulWithoutThem(t *testing.T) {
	_, port := consulAgentsIn(t, nil, "127.0.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var logs syncBuffer
	err := Main(ctx, []string{"-http-addr", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		"-proxy-id", "shop_web-1-sidecar-proxy", "-metrics-addr", "", "-consul-namespace", "team-a"}, &logs)
	if ctx.Err() != nil {
		t.Fatalf("the proxy still ran after 20 s against a Consul that refuses its namespace\n%s", logs.String())
	}
	for _, want := range []string{"refuses Consul Enterprise namespaces", "global.enableConsulNamespaces", "Namespaces are a Consul Enterprise feature"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("the proxy stopped with %v, want it to say %q", err, want)
		}
	}
}
