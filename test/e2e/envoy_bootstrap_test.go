package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
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
	// As docs/envoy-bootstrap.md "Regenerating the fixture" registers them.
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
	out, err := exec.Command(filepath.Join(lc.Root, "bin", "consul"), "connect", "envoy", "-bootstrap",
		"-http-addr", cluster.ConsulHTTPAddr(), "-proxy-id", "default_web-abc-sidecar-proxy",
		"-grpc-addr", "10.244.0.1:8502", "-admin-bind", "127.0.0.1:19000").Output()
	if err != nil {
		t.Fatalf("consul connect envoy -bootstrap: %v", err)
	}
	fixture, err := os.ReadFile(filepath.Join(lc.Root, "webhook", "envoybootstrap", "testdata", "consul-bootstrap.json"))
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
		t.Fatalf("consul connect envoy -bootstrap no longer prints webhook/envoybootstrap/testdata/consul-bootstrap.json; "+
			"recapture it (docs/envoy-bootstrap.md) and run go test ./webhook/envoybootstrap/. Consul printed:\n%s", out)
	}
}
