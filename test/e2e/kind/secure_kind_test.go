package kind

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/test/e2e/kind/kindcluster"
)

// secureKindCluster is the kind cluster of make kind-up SECURE=1; on an
// open one the test skips.
func secureKindCluster(t *testing.T) *kindcluster.Cluster {
	t.Helper()
	c := kindCluster(t)
	if !c.HasSecureConsul() {
		t.Skipf("needs the secure Consul: make kind-up SECURE=1 (no %s: this kind cluster runs the open one)", c.ConsulTokenFile())
	}
	return c
}

// TestKindSecureSeedWalkthrough runs the seed's walkthrough on the secure
// Consul of make kind-up SECURE=1 (ACLs with default deny, TLS only), with
// static-server on one worker and static-client on the other: with every
// source allowed to reach static-server (default deny needs an intention),
// hello world across nodes; each pod's sidecar logged in to the Kubernetes
// auth method with its own ServiceAccount (one token per pod, naming it,
// with its ServiceAccount's service identity alone); a deny intention makes
// the very next request exit 52, removing it brings hello world back.
// Consul itself answers only over TLS, with certificates the CA in
// meshlet's Secret verifies, and refuses whoever comes without a token.
func TestKindSecureSeedWalkthrough(t *testing.T) {
	c := secureKindCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	serverNode, clientNode := kindcluster.Workers[0], kindcluster.Workers[1]
	mgmt, err := c.ManagementToken()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := c.SecureConsulAPI(ctx, serverNode, mgmt)
	if err != nil {
		t.Fatal(err)
	}
	requireTLSOnly(t, ctx, c)

	allowAll := []*capi.SourceIntention{{Name: "*", Action: capi.IntentionActionAllow}}
	setIntentions := func(sources []*capi.SourceIntention) {
		t.Helper()
		if _, _, err := cl.ConfigEntries().Set(&capi.ServiceIntentionsConfigEntry{Kind: capi.ServiceIntentions,
			Name: "static-server", Sources: sources}, nil); err != nil {
			t.Fatalf("intentions of static-server: %v", err)
		}
	}
	setIntentions(allowAll)
	t.Cleanup(func() { _, _ = cl.ConfigEntries().Delete(capi.ServiceIntentions, "static-server", nil) })

	s := deploySeed(t, c, serverNode, clientNode)
	s.waitHello("first request")
	s.checkNodes(cl)
	checkLoginTokens(t, c, cl, s.ns)
	requireDefaultDeny(t, ctx, c, serverNode, cl)

	setIntentions(append([]*capi.SourceIntention{{Name: "static-client", Action: capi.IntentionActionDeny}}, allowAll...))
	s.requireDenied()
	setIntentions(allowAll)
	s.requireHello("after removing the deny")
}

// requireTLSOnly: on every worker, the client agent's plain HTTP (8500)
// and gRPC (8502) ports are closed, and its HTTPS (8501) and gRPC TLS
// (8503) ports present a certificate for the node's IP that the CA of
// meshlet's consul-ca-cert Secret verifies.
func requireTLSOnly(t *testing.T, ctx context.Context, c *kindcluster.Cluster) {
	t.Helper()
	secret := mustKubectl(t, c, "-n", kindcluster.MeshletNamespace, "get", "secret", cluster.ConsulCASecret,
		"-o", `go-template={{index .data "`+cluster.ConsulCASecretKey+`" | base64decode}}`)
	ca, err := os.ReadFile(c.ConsulCAFile())
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(secret) != strings.TrimSpace(string(ca)) {
		t.Errorf("Secret %s holds another CA than %s", cluster.ConsulCASecret, c.ConsulCAFile())
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatalf("%s holds no certificate", c.ConsulCAFile())
	}
	for _, node := range kindcluster.Workers {
		ip, err := c.NodeIP(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		for _, port := range []int{kindcluster.ConsulHTTPPort, 8502} {
			conn, err := net.DialTimeout("tcp", net.JoinHostPort(ip, strconv.Itoa(port)), 2*time.Second)
			if err == nil {
				conn.Close()
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s: the Consul agent's plain port %d: %v, want connection refused", node, port, err)
			}
		}
		for _, port := range []int{kindcluster.ConsulHTTPSPort, kindcluster.ConsulGRPCTLSPort} {
			addr := net.JoinHostPort(ip, strconv.Itoa(port))
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
				&tls.Config{RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
			if err != nil {
				t.Errorf("%s: TLS to %s, verified with the CA: %v", node, addr, err)
				continue
			}
			conn.Close()
		}
	}
}

// requireDefaultDeny: without a token, Consul refuses the agent's own
// endpoint and hides the catalog's services, which the management token
// sees (static-server is registered).
func requireDefaultDeny(t *testing.T, ctx context.Context, c *kindcluster.Cluster, node string, mgmt *capi.Client) {
	t.Helper()
	anon, err := c.SecureConsulAPI(ctx, node, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anon.Agent().Self(); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("an anonymous /v1/agent/self: %v, want 403 (default deny)", err)
	}
	all, _, err := mgmt.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := all["static-server"]; !ok {
		t.Fatalf("the management token's catalog %v lacks static-server", all)
	}
	seen, _, err := anon.Catalog().Services(nil)
	if err != nil {
		t.Fatalf("an anonymous catalog read: %v", err)
	}
	if len(seen) != 0 {
		t.Errorf("an anonymous catalog read: %v, want nothing (default deny)", seen)
	}
}

// checkLoginTokens: each injected pod of ns holds one token of the auth
// method, which Consul describes with the login's meta (the pod's
// namespace/name and UID, as meshlet's sidecar logs in), granting its
// ServiceAccount's service identity alone.
func checkLoginTokens(t *testing.T, c *kindcluster.Cluster, cl *capi.Client, ns string) {
	t.Helper()
	toks, err := cluster.PodLoginTokens(cl, ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"static-server", "static-client"} {
		pod := strings.TrimSpace(mustKubectl(t, c, "-n", ns, "get", "pods", "-l", "app="+app,
			"-o", "jsonpath={range .items[*]}{.metadata.name} {.metadata.uid}{end}"))
		name, uid, _ := strings.Cut(pod, " ")
		tok, ok := toks[name]
		switch {
		case !ok:
			t.Errorf("pod %s/%s (%s) holds no token of %s: %v", ns, name, app, cluster.AuthMethod, toks)
		case tok.UID != uid:
			t.Errorf("pod %s/%s's token names UID %q, the pod's is %q", ns, name, tok.UID, uid)
		case !slices.Equal(tok.Services, []string{app}):
			t.Errorf("pod %s/%s's token grants the service identities %v, want [%s] alone", ns, name, tok.Services, app)
		}
	}
	if len(toks) != 2 {
		t.Errorf("tokens of %s for pods of %s: %v, want the two pods'", cluster.AuthMethod, ns, toks)
	}
	t.Logf("login tokens of %s: %v", ns, toks)
}
