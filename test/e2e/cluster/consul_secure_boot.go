package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	capi "github.com/hashicorp/consul/api"
)

// startSecureConsul boots s under the cluster's consul/ and returns the
// client agent's token. The server's ACLs are bootstrapped with an
// initial_management token the harness makes: it is known before the
// server starts, so every call from the first is authenticated, and there
// is no one-shot /v1/acl/bootstrap whose lost reply would lock the harness
// out (the chart does the same when global.acls.bootstrapToken is given).
func (c *Cluster) startSecureConsul(ctx context.Context, s SecureConsul) (*capi.ACLToken, error) {
	f := secureConsulFiles{c.path("consul")}
	for _, d := range []string{f.serverData(), f.clientData(), f.tlsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if err := s.writeConsulPKI(f); err != nil {
		return nil, err
	}
	mgmt, err := newUUID()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(f.managementToken(), []byte(mgmt+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write the Consul management token: %w", err)
	}
	srv, err := c.startSecureServer(ctx, s, f, mgmt)
	if err != nil {
		return nil, err
	}
	// The bundle comes before the client agent so that waiting for it
	// already checks its certificate against what its users will trust.
	if err := c.writeConsulCABundle(ctx, srv, f); err != nil {
		return nil, err
	}
	tok, err := createAgentToken(ctx, srv, s.Datacenter, s.Client.Node)
	if err != nil {
		return nil, err
	}
	if err := c.startSecureClient(ctx, s, f, mgmt, tok.SecretID); err != nil {
		return nil, err
	}
	return tok, nil
}

// startSecureServer starts the server, waits until it has a leader and
// takes the management token, and gives it an agent token for its own node,
// as the chart's server-acl-init does: the agent's own updates of its node
// in the catalog run with that token, under default deny.
func (c *Cluster) startSecureServer(ctx context.Context, s SecureConsul, f secureConsulFiles, mgmt string) (*capi.Client, error) {
	hcl, err := s.serverHCL(f, mgmt)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(f.serverHCL(), []byte(hcl), 0o600); err != nil {
		return nil, err
	}
	if err := c.start("consul-server", []string{c.bin("consul"), "agent", "-config-file=" + f.serverHCL()}); err != nil {
		return nil, err
	}
	srv, err := secureConsulAPI(s.Server, s.serverName(), f.caCert(), mgmt)
	if err != nil {
		return nil, err
	}
	if err := c.waitFor(ctx, "consul-server", func(ctx context.Context) error {
		return consulLeaderAndACLs(ctx, srv)
	}); err != nil {
		return nil, err
	}
	tok, err := createAgentToken(ctx, srv, s.Datacenter, s.Server.Node)
	if err != nil {
		return nil, err
	}
	if _, err := srv.Agent().UpdateAgentACLToken(tok.SecretID, (&capi.WriteOptions{}).WithContext(ctx)); err != nil {
		return nil, fmt.Errorf("set the Consul server's agent token: %w", err)
	}
	return srv, nil
}

// startSecureClient writes the client agent's configuration with its
// token, starts it and waits until it has joined (with auto-encrypt, its
// HTTPS port only opens once the server has signed its certificate).
func (c *Cluster) startSecureClient(ctx context.Context, s SecureConsul, f secureConsulFiles, mgmt, agentToken string) error {
	hcl, err := s.clientHCL(f, agentToken)
	if err != nil {
		return err
	}
	if err := os.WriteFile(f.clientHCL(), []byte(hcl), 0o600); err != nil {
		return err
	}
	if err := c.start("consul-client", []string{c.bin("consul"), "agent", "-config-file=" + f.clientHCL()}); err != nil {
		return err
	}
	cli, err := secureConsulAPI(s.Client, "", f.caBundle(), mgmt)
	if err != nil {
		return err
	}
	return c.waitFor(ctx, "consul-client", func(ctx context.Context) error {
		return consulJoined(ctx, cli, s.Client.Node)
	})
}

// secureConsulAPI is an HTTPS API client for agent a; an empty serverName
// checks the certificate against the address.
func secureConsulAPI(a ConsulAgent, serverName, caFile, token string) (*capi.Client, error) {
	cl, err := capi.NewClient(&capi.Config{
		Address:   net.JoinHostPort(a.ClientAddrs[0], strconv.Itoa(a.HTTPS)),
		Scheme:    "https",
		Token:     token,
		TLSConfig: capi.TLSConfig{Address: serverName, CAFile: caFile},
	})
	if err != nil {
		return nil, fmt.Errorf("consul API client for %s: %w", a.Node, err)
	}
	return cl, nil
}

// consulLeaderAndACLs: a leader is elected and the ACL system, which the
// leader sets up after its election, takes the management token.
func consulLeaderAndACLs(ctx context.Context, cl *capi.Client) error {
	q := (&capi.QueryOptions{}).WithContext(ctx)
	leader, err := cl.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	if _, _, err := cl.ACL().TokenReadSelf(q); err != nil {
		return fmt.Errorf("management token: %w", err)
	}
	return nil
}

// consulJoined: the agent reaches the leader over TLS and its node is in
// the catalog, which it can only register with a working agent token.
func consulJoined(ctx context.Context, cl *capi.Client, node string) error {
	q := (&capi.QueryOptions{}).WithContext(ctx)
	leader, err := cl.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader seen from the client agent")
	}
	n, _, err := cl.Catalog().Node(node, q)
	if err != nil {
		return err
	}
	if n == nil || n.Node == nil {
		return fmt.Errorf("node %s not in the catalog yet", node)
	}
	return nil
}

// createAgentToken makes an agent token for node: a node identity, which
// grants node:write on it and service:read, as the chart gives its agents.
func createAgentToken(ctx context.Context, cl *capi.Client, dc, node string) (*capi.ACLToken, error) {
	tok, _, err := cl.ACL().TokenCreate(&capi.ACLToken{
		Description:    "agent token for " + node,
		NodeIdentities: []*capi.ACLNodeIdentity{{NodeName: node, Datacenter: dc}},
	}, (&capi.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("create the Consul agent token for %s: %w", node, err)
	}
	return tok, nil
}
