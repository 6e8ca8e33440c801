package cluster

import (
	"context"
	"fmt"
	"os"
	"time"

	capi "github.com/hashicorp/consul/api"
)

// Consul runs as the official chart lays it out: a server, and a client
// agent on every node reachable at the node address (HOST_IP in pods) on
// 8500 (HTTP) and 8502 (gRPC). Here both are host processes on the bridge
// address; the server keeps its ports off the client's defaults. The
// client agent's DNS (8600) is behind Service consul/consul-dns
// (consuldns.go) and recurses every name outside consul. to the cluster
// DNS, as the official chart's agents do with dns.enableRedirection: pods
// whose DNS goes to Consul still resolve the cluster's names.
const (
	consulServerNode = "consul-server"
	consulServerHTTP = 18500
	consulServerSerf = 18301
	consulServerRPC  = 18300
	// ConsulServerWAN is the server's WAN gossip port, where a second
	// datacenter's server joins (TestOtherDatacenterUpstream).
	ConsulServerWAN    = 18302
	consulClientSerf   = 8301
	consulDatacenter   = "dc1"
	consulClientDNS    = 8600
	consulServerConfig = `datacenter = %q
primary_datacenter = %[1]q
node_name = %q
server = true
bootstrap_expect = 1
data_dir = %q
bind_addr = %q
advertise_addr = %q
client_addr = "127.0.0.1"
ports {
  http = %d
  https = -1
  grpc = -1
  grpc_tls = -1
  dns = -1
  serf_lan = %d
  serf_wan = %d
  server = %d
}
connect { enabled = true }
performance { raft_multiplier = 1 }
ui_config { enabled = false }
disable_update_check = true
`
	consulClientConfig = `datacenter = %q
node_name = %q
server = false
data_dir = %q
bind_addr = %q
advertise_addr = %q
client_addr = "%s 127.0.0.1"
ports {
  http = %d
  https = -1
  grpc = %d
  grpc_tls = -1
  dns = %d
  serf_lan = %d
}
retry_join = ["%s:%d"]
retry_interval = "1s"
recursors = [%q]
disable_update_check = true
`
)

func (c *Cluster) startConsul(ctx context.Context) error {
	if c.Secure {
		return c.startLocalSecureConsul(ctx)
	}
	srvDir, cliDir := c.path("consul", "server"), c.path("consul", "client")
	for _, d := range []string{srvDir, cliDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	srv := fmt.Sprintf(consulServerConfig, consulDatacenter, consulServerNode, srvDir, NodeIP, NodeIP,
		consulServerHTTP, consulServerSerf, ConsulServerWAN, consulServerRPC)
	cli := fmt.Sprintf(consulClientConfig, consulDatacenter, NodeName, cliDir, NodeIP, NodeIP, NodeIP,
		ConsulHTTPPort, ConsulGRPCPort, consulClientDNS, consulClientSerf, NodeIP, consulServerSerf, ClusterDNS)
	if err := os.WriteFile(c.path("consul", "server.hcl"), []byte(srv), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(c.path("consul", "client.hcl"), []byte(cli), 0o644); err != nil {
		return err
	}
	if err := c.start("consul-server", []string{c.bin("consul"), "agent", "-config-file=" + c.path("consul", "server.hcl")}); err != nil {
		return err
	}
	return c.start("consul-client", []string{c.bin("consul"), "agent", "-config-file=" + c.path("consul", "client.hcl")})
}

// ConsulClient is an API client for the node's Consul client agent.
func ConsulClient() (*capi.Client, error) {
	cfg := capi.DefaultConfig()
	cfg.Address = ConsulHTTPAddr()
	return capi.NewClient(cfg)
}

// consulReady: a leader is elected and the client agent sees both members.
func (c *Cluster) consulReady(ctx context.Context) error {
	if c.Secure {
		return c.consulSecureReady(ctx)
	}
	cl, err := ConsulClient()
	if err != nil {
		return err
	}
	q := (&capi.QueryOptions{}).WithContext(ctx)
	leader, err := cl.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return err
	}
	if leader == "" {
		return fmt.Errorf("no leader yet")
	}
	members, err := cl.Agent().MembersOpts(capi.MembersOpts{})
	if err != nil {
		return err
	}
	alive := 0
	for _, m := range members {
		if m.Status == 1 { // serf StatusAlive
			alive++
		}
	}
	if alive < 2 {
		return fmt.Errorf("%d of 2 agents alive", alive)
	}
	// The catalog must know the client node before anything registers on it.
	nodes, _, err := cl.Catalog().Nodes(q)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.Node == NodeName {
			return nil
		}
	}
	return fmt.Errorf("node %s not in the catalog yet", NodeName)
}

// RestartConsulClient stops the node's Consul client agent and starts it
// again. With forget, the services and checks it persisted in its data dir
// are removed first: it comes back as a fresh Consul agent would (a replaced
// node or client pod), holding nothing, and whoever registered there must
// notice and register again.
func (c *Cluster) RestartConsulClient(ctx context.Context, forget bool) error {
	if err := c.stop("consul-client", 15*time.Second); err != nil {
		return fmt.Errorf("stop the Consul client agent: %w", err)
	}
	if forget {
		// Both pairs keep the client agent's data in consul/client.
		for _, d := range []string{"services", "checks", "proxy"} {
			if err := os.RemoveAll(c.path("consul", "client", d)); err != nil {
				return err
			}
		}
	}
	// Both pairs keep the client agent's configuration in consul/client.hcl
	// (the secure one with its agent token); consulReady tells them apart.
	if err := c.start("consul-client", []string{c.bin("consul"), "agent", "-config-file=" + c.path("consul", "client.hcl")}); err != nil {
		return fmt.Errorf("start the Consul client agent: %w", err)
	}
	return c.waitFor(ctx, "consul", c.consulReady)
}
