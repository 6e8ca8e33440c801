package reaper

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/test/consultest"
)

func freePort(t testing.TB) int { return consultest.FreePort(t) }

func newUUID(t testing.TB) string { return consultest.NewUUID(t) }

// consulWithACLs starts a single Consul server (dev mode: in memory) on
// free loopback ports with ACLs on and deny by default, and returns its
// HTTP address and a client holding the initial management token. The
// server is stopped by its PID when the test ends.
func consulWithACLs(t *testing.T) (string, *capi.Client) {
	t.Helper()
	mgmt := newUUID(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	_, httpPort, _ := net.SplitHostPort(addr)
	cfg := fmt.Sprintf(`node_name = "reaper-test"
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
ports { http = %s, https = -1, grpc = -1, grpc_tls = -1, dns = -1, serf_lan = %d, serf_wan = -1, server = %d }
disable_update_check = true
acl {
  enabled = true
  default_policy = "deny"
  tokens { initial_management = %q }
}
`, httpPort, freePort(t), freePort(t), mgmt)
	consultest.StartAgent(t, t.TempDir(), "consul", cfg, []string{"-dev"}, nil)
	cl, err := capi.NewClient(&capi.Config{Address: addr, Token: mgmt})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "Consul's leader elected and ACLs bootstrapped", func() error {
		_, _, err := cl.ACL().TokenReadSelf(nil)
		return err
	})
	return addr, cl
}

// eventually retries f every 50 ms until it returns nil or d passes.
func eventually(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// jwtIssuer signs the pods' ServiceAccount tokens for jwt auth methods
// standing in for the Kubernetes one (test/consultest).
type jwtIssuer struct{ consultest.JWTIssuer }

// authMethod creates a jwt auth method named name trusting a new key, with
// consul-k8s' binding rule: a service identity named like the
// ServiceAccount.
func authMethod(t *testing.T, cl *capi.Client, name string) jwtIssuer {
	return jwtIssuer{consultest.JWTAuthMethod(t, cl, name)}
}

// login logs in to method as a sidecar of ServiceAccount sa would, with
// meta (nil: none), and returns the token.
func (j jwtIssuer) login(t *testing.T, cl *capi.Client, method, sa string, meta map[string]string) *capi.ACLToken {
	t.Helper()
	tok, _, err := cl.ACL().Login(&capi.ACLLoginParams{AuthMethod: method, BearerToken: j.JWT(t, sa), Meta: meta}, nil)
	if err != nil {
		t.Fatalf("login to %s with meta %v: %v", method, meta, err)
	}
	return tok
}

// reaperClient is a client with a token of deploy/consul/token-reaper-policy.hcl
// only, as the chart's reaper has.
func reaperClient(t *testing.T, addr string, mgmt *capi.Client) *capi.Client {
	t.Helper()
	rules, err := os.ReadFile("../deploy/consul/token-reaper-policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := mgmt.ACL().PolicyCreate(&capi.ACLPolicy{Name: "meshlet-token-reaper", Rules: string(rules)}, nil)
	if err != nil {
		t.Fatalf("the policy file: %v", err)
	}
	tok, _, err := mgmt.ACL().TokenCreate(&capi.ACLToken{Description: "meshlet token reaper",
		Policies: []*capi.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := capi.NewClient(&capi.Config{Address: addr, Token: tok.SecretID})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// accessors are the accessor IDs of method's tokens in Consul now.
func accessors(t *testing.T, cl *capi.Client, method string) map[string]bool {
	t.Helper()
	toks, _, err := cl.ACL().TokenListFiltered(capi.ACLTokenFilterOptions{AuthMethod: method}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, tk := range toks {
		m[tk.AccessorID] = true
	}
	return m
}
