package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"
)

// A secure cluster (make cluster-up SECURE=1) runs SecureConsul on the
// ports the official chart gives a secure install: the client agent's
// HTTPS on 8501 and gRPC TLS on 8503 at the node's address, plain HTTP
// (8500) and plain gRPC (8502) closed. The client agent gets its
// certificate by auto-encrypt (global.tls.enableAutoEncrypt), the chart's
// usual choice; TestSecureConsul boots the other mode, a certificate the
// harness signs.
const (
	ConsulHTTPSPort   = 8501
	ConsulGRPCTLSPort = 8503
	consulServerHTTPS = 18501
)

// ConsulServerAddr is the secure cluster's Consul server's HTTPS API as
// pods reach it, and ConsulServerName the name in its certificate: the
// chart's consul.servers.address and tlsServerName.
var (
	ConsulServerAddr = net.JoinHostPort(NodeIP, strconv.Itoa(consulServerHTTPS))
	ConsulServerName = localSecureConsul().serverName()
)

// localSecureConsul is the secure cluster's Consul pair.
func localSecureConsul() SecureConsul {
	return SecureConsul{
		Datacenter:  consulDatacenter,
		AutoEncrypt: true,
		// The servers' HTTPS at the node's address too: meshlet's pods
		// fetch the Connect CA's roots there (ConsulServerAddr).
		Server: ConsulAgent{Node: consulServerNode, BindIP: NodeIP, ClientAddrs: []string{"127.0.0.1", NodeIP},
			HTTPS: consulServerHTTPS, SerfLAN: consulServerSerf, RPC: consulServerRPC},
		Client: ConsulAgent{Node: NodeName, BindIP: NodeIP, ClientAddrs: []string{NodeIP, "127.0.0.1"},
			HTTPS: ConsulHTTPSPort, GRPCTLS: ConsulGRPCTLSPort, DNS: consulClientDNS, SerfLAN: consulClientSerf, Recursor: ClusterDNS},
	}
}

func (c *Cluster) secureFiles() secureConsulFiles { return secureConsulFiles{c.path("consul")} }

// ConsulAddr is the node's Consul client agent as the consul CLI takes it
// (CONSUL_HTTP_ADDR): host:port, or https://host:port on a secure cluster.
func (c *Cluster) ConsulAddr() string {
	if c.Secure {
		return "https://" + net.JoinHostPort(NodeIP, strconv.Itoa(ConsulHTTPSPort))
	}
	return ConsulHTTPAddr()
}

// ConsulCAFile is the CA bundle that verifies the client agent's HTTPS
// certificate (the harness's CA and the Connect CA's roots, which sign an
// auto-encrypt agent's); empty without TLS.
func (c *Cluster) ConsulCAFile() string {
	if c.Secure {
		return c.secureFiles().caBundle()
	}
	return ""
}

// ConsulTokenFile holds the management token (mode 0600); empty without
// ACLs.
func (c *Cluster) ConsulTokenFile() string {
	if c.Secure {
		return c.secureFiles().managementToken()
	}
	return ""
}

// ConsulAPI is an API client of the node's Consul client agent: on a
// secure cluster over HTTPS with the management token.
func (c *Cluster) ConsulAPI() (*capi.Client, error) {
	if !c.Secure {
		return ConsulClient()
	}
	tok, err := os.ReadFile(c.ConsulTokenFile())
	if err != nil {
		return nil, fmt.Errorf("the Consul management token: %w", err)
	}
	return secureConsulAPI(localSecureConsul().Client, "", c.ConsulCAFile(), strings.TrimSpace(string(tok)))
}

// startLocalSecureConsul boots the secure pair and gives Consul what the
// official chart's server-acl-init gives it for connect injection: the
// Kubernetes auth method and its binding rule (consulauth.go). Then it
// makes the node agent's token and the Secrets meshlet's chart reads.
func (c *Cluster) startLocalSecureConsul(ctx context.Context) error {
	s := localSecureConsul()
	if _, err := c.startSecureConsul(ctx, s); err != nil {
		return err
	}
	cl, err := c.ConsulAPI()
	if err != nil {
		return err
	}
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(c.secureFiles().caCert())
	if err != nil {
		return err
	}
	return SecureMesh{Root: c.Root, Clientset: cs, Consul: cl, ConsulCLI: c.consulCLI,
		APIServer: "https://" + NodeIP + ":6443", ConsulCA: ca}.Setup(ctx)
}

// consulSecureReady: the client agent answers over HTTPS with the
// management token, sees the leader, and its node is in the catalog.
func (c *Cluster) consulSecureReady(ctx context.Context) error {
	cl, err := c.ConsulAPI()
	if err != nil {
		return err
	}
	return consulJoined(ctx, cl, NodeName)
}

// consulCLI runs bin/consul against the node's client agent with the
// environment .cluster/env gives a user (the management token from its
// file).
func (c *Cluster) consulCLI(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin("consul"), args...)
	cmd.Env = append(os.Environ(), c.ConsulEnv()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("consul %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// ConsulEnv is what the consul CLI needs to reach the node's client agent
// as an operator: address, and on a secure cluster the CA bundle and the
// management token's file.
func (c *Cluster) ConsulEnv() []string {
	env := []string{"CONSUL_HTTP_ADDR=" + c.ConsulAddr()}
	if c.Secure {
		env = append(env, "CONSUL_CACERT="+c.ConsulCAFile(), "CONSUL_HTTP_TOKEN_FILE="+c.ConsulTokenFile())
	}
	return env
}
