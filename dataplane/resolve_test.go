package dataplane

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/contract"
)

// reaches waits until a request through the upstream on addr is answered
// with want ("": an empty reply, as a denied connection's).
func reaches(t *testing.T, addr, want, what string) {
	t.Helper()
	eventually(t, 30*time.Second, what, func() error {
		got, err := get(addr)
		if want == "" {
			if err != nil || got != "" {
				return fmt.Errorf("got %q, %v; want an empty reply", got, err)
			}
			return nil
		}
		if err != nil || !strings.HasSuffix(got, want) {
			return fmt.Errorf("got %q, %v; want %q", got, err, want)
		}
		return nil
	})
}

// TestProxyPreparedQuery: an upstream `prepared_query:<name>:<port>` goes
// through Consul's prepared query, executed for its Connect-capable
// results, over mTLS to the service it returns; intentions apply to that
// service; a query whose service moves is followed.
func TestProxyPreparedQuery(t *testing.T) {
	cl := consulAgents(t)
	server := register(t, cl, meshPod{name: "static-server", ip: "127.0.0.1", app: app(t, "static-server"), public: freePort(t)})
	other := register(t, cl, meshPod{name: "other-server", ip: "127.0.0.1", app: app(t, "other-server"), public: freePort(t)})
	upPort := freePort(t)
	client := register(t, cl, meshPod{name: "static-client", ip: "127.0.0.1", public: freePort(t),
		upstreams: []contract.Upstream{{Name: "geo", PreparedQuery: true, LocalPort: upPort}}})
	query := &capi.PreparedQueryDefinition{Name: "geo", Service: capi.ServiceQuery{Service: "static-server"}}
	id, _, err := cl.PreparedQuery().Create(query, nil)
	if err != nil {
		t.Fatal(err)
	}
	startProxy(t, cl, server.Proxy.ID)
	startProxy(t, cl, other.Proxy.ID)
	clientReg := startProxy(t, cl, client.Proxy.ID)
	upstream := net.JoinHostPort("127.0.0.1", strconv.Itoa(upPort))

	reaches(t, upstream, "hello from static-server", "the query's service")
	if n := counter(t, clientReg, dirUpstream, resOK); n < 1 {
		t.Errorf("client proxy counted %v upstream connections, want ≥ 1", n)
	}
	deny := &capi.Intention{SourceName: "static-client", DestinationName: "static-server", Action: capi.IntentionActionDeny}
	if _, err := cl.Connect().IntentionUpsert(deny, nil); err != nil {
		t.Fatal(err)
	}
	reaches(t, upstream, "", "the deny intention to apply to the query's service")

	// The query now names another service: the proxy executes it again
	// and checks the new service's identity, which no intention denies.
	query.ID, query.Service.Service = id, "other-server"
	if _, err := cl.PreparedQuery().Update(query, nil); err != nil {
		t.Fatal(err)
	}
	reaches(t, upstream, "hello from other-server", "the query's new service")
}

// secondDatacenter starts a Consul server of datacenter dc2 that joins
// the WAN pool of dc1's server on wan (dc1 the primary: dc2's Connect CA
// is signed by it and the intentions are replicated from it), and returns
// an API client of that server, where dc2's services are registered.
func secondDatacenter(t *testing.T, dc1 *capi.Client, wan int) *capi.Client {
	t.Helper()
	dir := t.TempDir()
	httpPort := freePort(t)
	cfg := fmt.Sprintf(`datacenter = "dc2"
primary_datacenter = "dc1"
node_name = "server-dc2"
server = true
bootstrap_expect = 1
data_dir = %q
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
ports { http = %d, https = -1, grpc = -1, grpc_tls = -1, dns = -1, serf_lan = %d, serf_wan = %d, server = %d }
retry_join_wan = ["127.0.0.1:%d"]
retry_interval_wan = "1s"
connect { enabled = true }
performance { raft_multiplier = 1 }
disable_update_check = true
`, filepath.Join(dir, "data"), httpPort, freePort(t), freePort(t), freePort(t), wan)
	startConsulAgent(t, nil, dir, "server-dc2", cfg)
	c := capi.DefaultConfig()
	c.Address = net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
	cl, err := capi.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 90*time.Second, "dc2 joined to dc1, with a leaf certificate signed through dc1's CA", func() error {
		dcs, err := dc1.Catalog().Datacenters()
		if err != nil || len(dcs) != 2 {
			return fmt.Errorf("dc1 knows datacenters %v (%v)", dcs, err)
		}
		if _, _, err := cl.Agent().ConnectCALeaf("probe", nil); err != nil {
			return fmt.Errorf("dc2 leaf: %w", err)
		}
		return nil
	})
	return cl
}

// TestProxyOtherDatacenter: an upstream `<service>:<port>:<datacenter>`
// reaches the service's instance in that datacenter, over mTLS with
// dc2's certificate (signed under the primary's roots), even though a
// service of the same name runs in the local one; a deny intention,
// written in the primary, applies there.
func TestProxyOtherDatacenter(t *testing.T) {
	wan := freePort(t)
	cl, _ := consulAgentsIn(t, nil, "127.0.0.1", consulOpts{wan: wan})
	dc2 := secondDatacenter(t, cl, wan)
	remote := register(t, dc2, meshPod{name: "static-server", ip: "127.0.0.1", app: app(t, "static-server in dc2"), public: freePort(t)})
	local := register(t, cl, meshPod{name: "static-server", ip: "127.0.0.1", app: app(t, "static-server in dc1"), public: freePort(t)})
	upPort, localPort := freePort(t), freePort(t)
	client := register(t, cl, meshPod{name: "static-client", ip: "127.0.0.1", public: freePort(t),
		upstreams: []contract.Upstream{{Name: "static-server", Datacenter: "dc2", LocalPort: upPort},
			{Name: "static-server", LocalPort: localPort}}})
	startProxy(t, dc2, remote.Proxy.ID)
	startProxy(t, cl, local.Proxy.ID)
	startProxy(t, cl, client.Proxy.ID)
	upstream := net.JoinHostPort("127.0.0.1", strconv.Itoa(upPort))

	reaches(t, upstream, "hello from static-server in dc2", "dc2's static-server")
	reaches(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(localPort)), "hello from static-server in dc1", "dc1's static-server")
	deny := &capi.Intention{SourceName: "static-client", DestinationName: "static-server", Action: capi.IntentionActionDeny}
	if _, err := cl.Connect().IntentionUpsert(deny, nil); err != nil {
		t.Fatal(err)
	}
	reaches(t, upstream, "", "the deny intention, replicated to dc2, to apply")
}
