package e2e

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// TestEnvoyBootstrapFixtureIsConsuls keeps webhook/envoybootstrap's copy
// of `consul connect envoy -bootstrap` (testdata/consul-bootstrap.json)
// honest: the consul binary the repo builds, asked on the local cluster's
// client agent for the proxy the fixture was captured for, must print the
// same bootstrap. The webhook's own bootstrap is checked field by field
// against the fixture in webhook/envoybootstrap/consul_test.go; this test
// makes a Consul upgrade that changes the output fail here rather than go
// unnoticed.
func TestEnvoyBootstrapFixtureIsConsuls(t *testing.T) {
	requireLocalNode(t, "the fixture was captured from the local cluster's Consul agent, at its address")
	cl := consul(t)
	registerFixtureProxy(t, cl)
	out, err := exec.Command(filepath.Join(lc.Root, "bin", "consul"), "connect", "envoy", "-bootstrap",
		"-http-addr", cluster.ConsulHTTPAddr(), "-proxy-id", "default_web-abc-sidecar-proxy",
		"-grpc-addr", "10.244.0.1:8502", "-admin-bind", "127.0.0.1:19000").Output()
	if err != nil {
		t.Fatalf("consul connect envoy -bootstrap: %v", err)
	}
	compareWithFixture(t, out, filepath.Join(lc.Root, "webhook", "envoybootstrap", "testdata", "consul-bootstrap.json"))
}

// registerFixtureProxy registers the proxy the fixtures were captured for,
// as docs/envoy-bootstrap.md "Regenerating the fixture" does.
func registerFixtureProxy(t *testing.T, cl *capi.Client) {
	t.Helper()
	for _, r := range []*capi.AgentServiceRegistration{
		{ID: "default_web-abc", Name: "web", Port: 8080, Address: "10.244.0.50"},
		{Kind: capi.ServiceKindConnectProxy, ID: "default_web-abc-sidecar-proxy", Name: "web-sidecar-proxy",
			Port: 20000, Address: "10.244.0.50", Proxy: &capi.AgentServiceConnectProxyConfig{
				DestinationServiceName: "web", DestinationServiceID: "default_web-abc", LocalServicePort: 8080}},
	} {
		if err := cl.Agent().ServiceRegister(r); err != nil {
			t.Fatal(err)
		}
		id := r.ID
		t.Cleanup(func() { _ = cl.Agent().ServiceDeregister(id) })
	}
}

// compareWithFixture: Consul printed out, the fixture at path.
func compareWithFixture(t *testing.T, out []byte, path string) {
	t.Helper()
	fixture, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var live, want any
	if err := json.Unmarshal(out, &live); err != nil {
		t.Fatalf("consul's output is not JSON: %v\n%s", err, out)
	}
	if err := json.Unmarshal(fixture, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(live, want) {
		t.Fatalf("consul connect envoy -bootstrap no longer prints %s; "+
			"recapture it (docs/envoy-bootstrap.md) and run go test ./webhook/envoybootstrap/. Consul printed:\n%s", path, out)
	}
}

// TestSecureModeEnvoyBootstrapFixtureIsConsuls does the same for the TLS
// fixture (testdata/consul-bootstrap-tls.json), which
// TestLoginBootstrapMatchesConsul compares with the bootstrap data plane
// envoy's Envoy runs with on a Consul with ACLs and TLS: `consul connect
// envoy -bootstrap` over the secure cluster's gRPC TLS port, with the
// fixture's CA file and a token made with the fixture's secret (the
// service identity web), must still print it.
func TestSecureModeEnvoyBootstrapFixtureIsConsuls(t *testing.T) {
	requireSecureConsul(t)
	requireLocalNode(t, "the fixture was captured from the secure local cluster's Consul agent, at its address")
	cl := consul(t)
	const secret, accessor = "11111111-2222-4333-8444-555555555555", "11111111-2222-4333-8444-666666666666"
	if _, _, err := cl.ACL().TokenCreate(&capi.ACLToken{AccessorID: accessor, SecretID: secret, Description: "envoy bootstrap fixture",
		ServiceIdentities: []*capi.ACLServiceIdentity{{ServiceName: "web"}}}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = cl.ACL().TokenDelete(accessor, nil) })
	registerFixtureProxy(t, cl)
	root := lc.Root
	cmd := exec.Command(filepath.Join(root, "bin", "consul"), "connect", "envoy", "-bootstrap",
		"-proxy-id", "default_web-abc-sidecar-proxy", "-grpc-addr", "https://"+net.JoinHostPort(cluster.NodeIP, strconv.Itoa(cluster.ConsulGRPCTLSPort)),
		"-grpc-ca-file", filepath.Join(root, "webhook", "envoybootstrap", "testdata", "agent-ca.pem"),
		"-token", secret, "-admin-bind", "127.0.0.1:19000")
	cmd.Env = append(os.Environ(), suite.ConsulEnv()...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("consul connect envoy -bootstrap: %v", err)
	}
	compareWithFixture(t, out, filepath.Join(root, "webhook", "envoybootstrap", "testdata", "consul-bootstrap-tls.json"))
}
