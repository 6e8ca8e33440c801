package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/webhook"
)

// TestPreparedQueryUpstream: the seed's explicit-upstream client, with its
// upstream written `prepared_query:<name>:1234` for a prepared query made
// in Consul (the HTTP API: the consul CLI has no command for them) that
// returns static-server. `curl -s localhost:1234` in the client answers
// "hello world"; a deny intention makes the next request exit 52.
func TestPreparedQueryUpstream(t *testing.T) {
	requireDataPlane(t, webhook.DataPlaneMeshlet)
	cs := clientset(t)
	cl := consul(t)
	ns := testNamespace(t, cs, "pq")
	leaveNoRegistrations(t, cs, cl, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	name := "static-server-" + ns
	id, _, err := cl.PreparedQuery().Create(&capi.PreparedQueryDefinition{Name: name,
		Service: capi.ServiceQuery{Service: "static-server"}}, nil)
	if err != nil {
		t.Fatalf("create prepared query %s: %v", name, err)
	}
	t.Cleanup(func() { _, _ = cl.PreparedQuery().Delete(id, nil) })

	client := readMeshManifest(t, "static-client-upstream.yaml")
	const seed = `'consul.hashicorp.com/connect-service-upstreams': 'static-server:1234'`
	if !strings.Contains(client, seed) {
		t.Fatalf("examples/mesh/static-client-upstream.yaml no longer has %s", seed)
	}
	client = strings.Replace(client, seed, fmt.Sprintf(`'consul.hashicorp.com/connect-service-upstreams': 'prepared_query:%s:1234'`, name), 1)
	kubectl(t, "apply", "-n", ns, "-f", meshManifest(t, "static-server.yaml"))
	kubectl(t, "apply", "-n", ns, "-f", writeManifest(t, client))
	kubectl(t, "rollout", "status", "-n", ns, "deploy/static-server", "deploy/static-client", "--timeout=120s")

	curl := []string{"exec", "-n", ns, "deploy/static-client", "-c", "static-client", "--", "curl", "-s", "localhost:1234"}
	waitFor(t, ctx, "hello world through the prepared query", func(context.Context) (bool, error) {
		out, err := kubectlErr(curl...)
		return err == nil && strings.TrimSpace(out) == helloWorld, fmt.Errorf("%q, %v", out, err)
	})
	t.Cleanup(func() { _, _ = consulCLI("intention", "delete", "static-client", "static-server") })
	if out, err := consulCLI("intention", "create", "-deny", "static-client", "static-server"); err != nil {
		t.Fatalf("consul intention create -deny: %v: %s", err, out)
	}
	// meshlet's proxy asks the Consul agent at each connection.
	if out, err := kubectlErr(curl...); err == nil || !strings.Contains(out, "command terminated with exit code 52") {
		t.Errorf("the first request after the deny: %q, %v; want curl's exit code 52", out, err)
	}
}
