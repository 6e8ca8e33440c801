package dataplane

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/consultest"
)

// jwtIssuer signs the pods' ServiceAccount tokens for a jwt auth method
// standing in for the Kubernetes one (test/consultest).
type jwtIssuer struct{ consultest.JWTIssuer }

const testAuthMethod = "meshlet-test-jwt"

// authMethod creates, with the management client cl, the jwt auth method
// testAuthMethod with consul-k8s' binding rule.
func authMethod(t *testing.T, cl *capi.Client) jwtIssuer {
	return jwtIssuer{consultest.JWTAuthMethod(t, cl, testAuthMethod)}
}

// tokenFile writes a signed token of ServiceAccount sa, as kubelet projects
// one into the pod.
func (j jwtIssuer) tokenFile(t *testing.T, sa string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(j.JWT(t, sa)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newUUID(t *testing.T) string { return consultest.NewUUID(t) }

func loginTokens(t *testing.T, cl *capi.Client) []*capi.ACLTokenListEntry {
	t.Helper()
	toks, _, err := cl.ACL().TokenListFiltered(capi.ACLTokenFilterOptions{AuthMethod: testAuthMethod}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return toks
}

// TestProxyLogsIn: on a Consul with ACLs (default deny), `meshlet proxy
// -acl-auth-method` logs in with the pod's ServiceAccount token, serves
// with the token it gets (its registration, leaf, roots and catalog are
// all denied to anonymous), that token names the pod and has the pod's
// service identity alone, and it is gone once the proxy has stopped.
func TestProxyLogsIn(t *testing.T) {
	mgmt := newUUID(t)
	cl, port := consulAgentsIn(t, nil, "127.0.0.1", consulOpts{management: mgmt})
	jwt := authMethod(t, cl)
	regs := register(t, cl, meshPod{name: "web", ip: "127.0.0.1", app: freePort(t), public: freePort(t)})
	for k, v := range map[string]string{contract.EnvPodNamespace: "default", contract.EnvPodName: "web-1", contract.EnvPodUID: "web-1-uid"} {
		t.Setenv(k, v)
	}
	metrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	logs, done, stop := runProxy(t, []string{"-proxy-id", regs.Proxy.ID, "-http-addr", "127.0.0.1:" + strconv.Itoa(port),
		"-metrics-addr", metrics, "-drain", "0s", "-acl-auth-method", testAuthMethod,
		"-acl-bearer-token-file", jwt.tokenFile(t, "web")})
	waitServing(t, "the proxy serving with its login's token", metrics, logs, done)
	toks := loginTokens(t, cl)
	if len(toks) != 1 {
		t.Fatalf("%d tokens of the auth method, want the proxy's one", len(toks))
	}
	tok, _, err := cl.ACL().TokenRead(toks[0].AccessorID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(tok.ServiceIdentities) != 1 || tok.ServiceIdentities[0].ServiceName != "web" || len(tok.Policies) != 0 || len(tok.Roles) != 0 {
		t.Errorf("the proxy's token grants %+v, policies %v, roles %v; want the service identity web alone", tok.ServiceIdentities, tok.Policies, tok.Roles)
	}
	if tok.AuthMethod != testAuthMethod {
		t.Errorf("token of auth method %q", tok.AuthMethod)
	}
	// Consul keeps a login's meta in the token's description.
	if !strings.Contains(tok.Description, `"pod":"default/web-1"`) || !strings.Contains(tok.Description, `"pod-uid":"web-1-uid"`) {
		t.Errorf("the token's description %q does not name the pod and its UID", tok.Description)
	}
	if strings.Contains(logs.String(), tok.SecretID) {
		t.Error("the proxy logged its token's secret")
	}

	// What the token can do: its own service's leaf, not another's.
	own, err := capi.NewClient(&capi.Config{Address: "127.0.0.1:" + strconv.Itoa(port), Token: tok.SecretID})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := own.Agent().ConnectCALeaf("web", nil); err != nil {
		t.Errorf("the token cannot get web's leaf: %v", err)
	}
	if _, _, err := own.Agent().ConnectCALeaf("db", nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("the token got db's leaf (%v): it must get only web's", err)
	}

	if err := stop(); err != nil {
		t.Fatalf("the proxy stopped with %v", err)
	}
	if toks := loginTokens(t, cl); len(toks) != 0 {
		t.Errorf("%d tokens of the auth method left after the proxy stopped, want none\n%s", len(toks), logs.String())
	}
	if _, _, err := cl.ACL().TokenRead(tok.AccessorID, nil); err == nil {
		t.Error("the logged-out token is still in Consul")
	}
}

// TestLoginRefusedServesNothing: a login the auth method refuses (here:
// ServiceAccount default, which no binding rule maps) is retried and
// logged with Consul's reason; the proxy never gets to serve.
func TestLoginRefusedServesNothing(t *testing.T) {
	mgmt := newUUID(t)
	cl, port := consulAgentsIn(t, nil, "127.0.0.1", consulOpts{management: mgmt})
	jwt := authMethod(t, cl)
	anon, err := capi.NewClient(&capi.Config{Address: "127.0.0.1:" + strconv.Itoa(port)})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err = loginUntil(ctx, anon, Login{AuthMethod: testAuthMethod, BearerTokenFile: jwt.tokenFile(t, "default")}, nil, log)
	if err == nil || !strings.Contains(err.Error(), "login to Consul auth method "+testAuthMethod) {
		t.Fatalf("err %v, want the login's failure naming the auth method", err)
	}
	out := logs.String()
	if !strings.Contains(out, "level=ERROR msg=\"Consul login failed") || !strings.Contains(out, "level=WARN") || !strings.Contains(out, "403") {
		t.Errorf("want the first refusal at error, the retries at warn, each with Consul's 403; logs:\n%s", out)
	}
	if toks := loginTokens(t, cl); len(toks) != 0 {
		t.Errorf("%d tokens made by a refused login", len(toks))
	}
}
