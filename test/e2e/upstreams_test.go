package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/test/consultest"
	"github.com/meshlet/meshlet/test/e2e/cluster"
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

	curl := seedClientWithUpstream(t, ns, "prepared_query:"+name+":1234")
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

// TestOtherDatacenterUpstream: a second datacenter beside the local
// cluster's: a Consul server of dc2 on the node, WAN-joined to the
// cluster's server (dc1, the primary: dc2's certificates come from its
// CA, its intentions from its store), where static-server is registered
// with an instance pods can route to: http-echo and meshlet-proxy as host
// processes, the proxy on the node's address. The seed's explicit-upstream
// client, with its upstream written `static-server:1234:dc2`, gets dc2's
// answer although a static-server runs in dc1 too; a deny intention makes
// the next request exit 52.
func TestOtherDatacenterUpstream(t *testing.T) {
	requireDataPlane(t, webhook.DataPlaneMeshlet)
	requireLocalNode(t, "runs a second datacenter's Consul server and an instance of it on the node")
	if suite.ACLs() {
		t.Skip("the second datacenter's server has no ACL replication token: TestOtherDatacenterUpstream runs on the local cluster without ACLs")
	}
	cs := clientset(t)
	cl := consul(t)
	ns := testNamespace(t, cs, "dc2")
	leaveNoRegistrations(t, cs, cl, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	dc2 := secondDatacenter(t, ctx, cl)
	echo, public := consultest.FreePort(t), consultest.FreePort(t)
	startHostProcess(t, filepath.Join(root, "bin", "http-echo"), "-listen", fmt.Sprintf("127.0.0.1:%d", echo), "-text", "hello world from dc2")
	const proxyID = "static-server-dc2-sidecar-proxy"
	for _, s := range []*capi.AgentServiceRegistration{
		{ID: "static-server-dc2", Name: "static-server", Address: "127.0.0.1", Port: echo},
		{ID: proxyID, Name: "static-server-sidecar-proxy", Kind: capi.ServiceKindConnectProxy, Address: cluster.NodeIP, Port: public,
			Proxy: &capi.AgentServiceConnectProxyConfig{DestinationServiceName: "static-server", DestinationServiceID: "static-server-dc2",
				LocalServiceAddress: "127.0.0.1", LocalServicePort: echo}},
	} {
		if err := dc2.client.Agent().ServiceRegister(s); err != nil {
			t.Fatalf("register %s in dc2: %v", s.ID, err)
		}
	}
	startHostProcess(t, filepath.Join(root, "bin", "meshlet-proxy"), "-proxy-id", proxyID, "-http-addr", dc2.httpAddr,
		"-metrics-addr", fmt.Sprintf("127.0.0.1:%d", consultest.FreePort(t)), "-node-agent-addr", "")

	curl := seedClientWithUpstream(t, ns, "static-server:1234:dc2")
	waitFor(t, ctx, "dc2's hello world through the upstream", func(context.Context) (bool, error) {
		out, err := kubectlErr(curl...)
		return err == nil && strings.TrimSpace(out) == "hello world from dc2", fmt.Errorf("%q, %v", out, err)
	})
	t.Cleanup(func() { _, _ = consulCLI("intention", "delete", "static-client", "static-server") })
	if out, err := consulCLI("intention", "create", "-deny", "static-client", "static-server"); err != nil {
		t.Fatalf("consul intention create -deny: %v: %s", err, out)
	}
	// Written in dc1, the intention reaches dc2 by replication.
	waitFor(t, ctx, "exit code 52 after the deny", func(context.Context) (bool, error) {
		out, err := kubectlErr(curl...)
		return err != nil && strings.Contains(out, "command terminated with exit code 52"), fmt.Errorf("%q, %v", out, err)
	})
}

// seedClientWithUpstream applies the seed's static-server and its
// explicit-upstream client in ns, the client's upstream written as
// upstream (on local port 1234), waits for both, and returns the kubectl
// arguments of the seed's `curl -s localhost:1234` in the client.
func seedClientWithUpstream(t *testing.T, ns, upstream string) []string {
	t.Helper()
	client := readMeshManifest(t, "static-client-upstream.yaml")
	const seed = `'consul.hashicorp.com/connect-service-upstreams': 'static-server:1234'`
	if !strings.Contains(client, seed) {
		t.Fatalf("examples/mesh/static-client-upstream.yaml no longer has %s", seed)
	}
	client = strings.Replace(client, seed, fmt.Sprintf(`'consul.hashicorp.com/connect-service-upstreams': '%s'`, upstream), 1)
	kubectl(t, "apply", "-n", ns, "-f", meshManifest(t, "static-server.yaml"))
	kubectl(t, "apply", "-n", ns, "-f", writeManifest(t, client))
	kubectl(t, "rollout", "status", "-n", ns, "deploy/static-server", "deploy/static-client", "--timeout=120s")
	return []string{"exec", "-n", ns, "deploy/static-client", "-c", "static-client", "--", "curl", "-s", "localhost:1234"}
}

// datacenter is a Consul server's API client and HTTP address.
type datacenter struct {
	client   *capi.Client
	httpAddr string
}

// secondDatacenter starts a Consul server of dc2 on the node, joined to
// the cluster's server's WAN pool, until the test ends, and waits until
// dc1 knows it and it signs leaf certificates.
func secondDatacenter(t *testing.T, ctx context.Context, dc1 *capi.Client) datacenter {
	t.Helper()
	dir := t.TempDir()
	httpAddr := fmt.Sprintf("127.0.0.1:%d", consultest.FreePort(t))
	_, httpPort, _ := strings.Cut(httpAddr, ":")
	cfg := fmt.Sprintf(`datacenter = "dc2"
primary_datacenter = "dc1"
node_name = "consul-server-dc2"
server = true
bootstrap_expect = 1
data_dir = %q
bind_addr = %q
client_addr = "127.0.0.1"
ports { http = %s, https = -1, grpc = -1, grpc_tls = -1, dns = -1, serf_lan = %d, serf_wan = %d, server = %d }
retry_join_wan = ["%s:%d"]
retry_interval_wan = "1s"
connect { enabled = true }
performance { raft_multiplier = 1 }
disable_update_check = true
`, filepath.Join(dir, "data"), cluster.NodeIP, httpPort, consultest.FreePort(t), consultest.FreePort(t), consultest.FreePort(t),
		cluster.NodeIP, cluster.ConsulServerWAN)
	path := filepath.Join(dir, "server.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	startHostProcess(t, tools.consul, "agent", "-config-file="+path)
	c := capi.DefaultConfig()
	c.Address = httpAddr
	cl, err := capi.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "dc2 joined to dc1, signing leaf certificates under dc1's CA", func(context.Context) (bool, error) {
		dcs, err := dc1.Catalog().Datacenters()
		if err != nil || !slices.Contains(dcs, "dc2") {
			return false, fmt.Errorf("dc1 knows datacenters %v (%v)", dcs, err)
		}
		if _, _, err := cl.Agent().ConnectCALeaf("probe", nil); err != nil {
			return false, fmt.Errorf("dc2 leaf: %w", err)
		}
		return true, nil
	})
	return datacenter{client: cl, httpAddr: httpAddr}
}
