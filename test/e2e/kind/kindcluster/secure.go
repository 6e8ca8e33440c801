package kindcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshlet/meshlet/test/e2e/cluster"
)

// The secure mesh of make kind-up SECURE=1: Consul as the official chart's
// secure install runs it (consul-secure.yaml: ACLs with default deny, TLS
// only), configured by test/e2e/cluster's SecureConsul, then what meshlet
// needs on it (cluster.SecureMesh: the Kubernetes auth method, the node
// agent's and the token reaper's tokens, their Secrets) and meshlet's
// chart with the secure values on top of the open ones.
const (
	ConsulSecureManifest = "test/e2e/kind/consul/consul-secure.yaml"
	MeshletSecureValues  = "test/e2e/kind/consul/meshlet-values-secure.yaml"
	// ConsulHTTPSPort and ConsulGRPCTLSPort are the client agents' on
	// each node's IP, the chart's; 8500 and 8502 are closed.
	ConsulHTTPSPort   = cluster.ConsulHTTPSPort
	ConsulGRPCTLSPort = cluster.ConsulGRPCTLSPort
	// consulDir is where the Consul pods find their files (the Secrets'
	// mounts): the configuration's paths.
	consulDir = "/consul"
	// consulServerJoin is the server's name in the cluster DNS (the
	// headless Service), which the client agents join.
	consulServerJoin = "consul-server-0.consul-server." + cluster.ConsulNamespace + ".svc.cluster.local"
	consulServerNode = "consul-server"
	consulDatacenter = "dc1"
)

// HasSecureConsul says whether the cluster runs the secure Consul: make
// kind-up SECURE=1 leaves the management token's file, which an open
// cluster has not.
func (c *Cluster) HasSecureConsul() bool {
	_, err := os.Stat(c.ConsulTokenFile())
	return err == nil
}

// ConsulTokenFile holds the secure Consul's management token (mode 0600).
func (c *Cluster) ConsulTokenFile() string { return c.dir("consul", "management-token") }

// ConsulCAFile is the CA of the secure Consul's certificates.
func (c *Cluster) ConsulCAFile() string { return c.dir("consul", "tls", "ca.crt") }

// SecureConsulAPI is an API client of the client agent on node, over HTTPS
// with token (empty: anonymous), verified with ConsulCAFile.
func (c *Cluster) SecureConsulAPI(ctx context.Context, node, token string) (*capi.Client, error) {
	ip, err := c.NodeIP(ctx, node)
	if err != nil {
		return nil, err
	}
	cl, err := capi.NewClient(&capi.Config{Address: net.JoinHostPort(ip, strconv.Itoa(ConsulHTTPSPort)), Scheme: "https",
		Token: token, TLSConfig: capi.TLSConfig{CAFile: c.ConsulCAFile()}})
	if err != nil {
		return nil, fmt.Errorf("consul API client for %s: %w", node, err)
	}
	return cl, nil
}

// ManagementToken is the secure Consul's management token.
func (c *Cluster) ManagementToken() (string, error) {
	b, err := os.ReadFile(c.ConsulTokenFile())
	if err != nil {
		return "", fmt.Errorf("the Consul management token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// installSecureMesh installs the secure Consul, sets it up for meshlet and
// installs meshlet.
func (c *Cluster) installSecureMesh(ctx context.Context) error {
	t0 := time.Now()
	nodes := append([]string{Name + "-control-plane"}, Workers...)
	ips := make([]string, len(nodes))
	for i, n := range nodes {
		ip, err := c.NodeIP(ctx, n)
		if err != nil {
			return err
		}
		ips[i] = ip
	}
	tokens, err := c.writeSecureConsulFiles(nodes, ips)
	if err != nil {
		return err
	}
	if err := c.createConsulSecrets(ctx, nodes); err != nil {
		return err
	}
	manifest := filepath.Join(c.Root, ConsulSecureManifest)
	if _, err := c.kubectl(ctx, nil, "apply", "-f", manifest, "-l", "component!=client"); err != nil {
		return fmt.Errorf("install the Consul server: %w", err)
	}
	if _, err := c.kubectl(ctx, nil, "-n", cluster.ConsulNamespace, "rollout", "status", "statefulset/consul-server", "--timeout=180s"); err != nil {
		return fmt.Errorf("consul server not ready: %w", err)
	}
	if err := c.createAgentTokens(ctx, tokens); err != nil {
		return err
	}
	if _, err := c.kubectl(ctx, nil, "apply", "-f", manifest); err != nil {
		return fmt.Errorf("install the Consul client agents: %w", err)
	}
	if _, err := c.kubectl(ctx, nil, "-n", cluster.ConsulNamespace, "rollout", "status", "daemonset/consul-client", "--timeout=180s"); err != nil {
		return fmt.Errorf("consul client agents not ready: %w", err)
	}
	c.Log.Info("secure Consul ready: a server, a client agent on every node, ACLs and TLS", "took", time.Since(t0).Round(time.Millisecond))
	if err := c.setupSecureMesh(ctx); err != nil {
		return err
	}
	return c.helmInstallMeshlet(ctx, MeshletValues, MeshletSecureValues)
}

// writeSecureConsulFiles writes under .kind/consul the CA and certificates
// (tls/), the management token, and the agents' configurations
// (server-config/, client-config/); it returns each agent's token secret
// by node, for createAgentTokens.
func (c *Cluster) writeSecureConsulFiles(nodes, ips []string) (map[string]string, error) {
	dir := c.dir("consul")
	for _, d := range []string{"server-config", "client-config"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	s := cluster.SecureConsul{
		Datacenter: consulDatacenter,
		// The server's pod IP is known in its pod only: a go-sockaddr
		// template, which Consul resolves there.
		Server: cluster.ConsulAgent{Node: consulServerNode, BindIP: "{{ GetPrivateIP }}", ClientAddrs: []string{"127.0.0.1"},
			HTTPS: ConsulHTTPSPort, SerfLAN: 8301, RPC: 8300},
		// One client certificate for every node's address.
		Client:     cluster.ConsulAgent{Node: "client", BindIP: ips[0], ClientAddrs: ips},
		ServerJoin: consulServerJoin,
	}
	if err := s.WritePKI(dir); err != nil {
		return nil, err
	}
	mgmt, err := cluster.NewToken()
	if err != nil {
		return nil, err
	}
	files := map[string]string{"management-token": mgmt + "\n", filepath.Join("server-config", "management-token"): mgmt + "\n"}
	if files[filepath.Join("server-config", "server.hcl")], err = s.ServerConfig(consulDir, mgmt); err != nil {
		return nil, err
	}
	tokens := map[string]string{}
	for i, n := range append([]string{consulServerNode}, nodes...) {
		if tokens[n], err = cluster.NewToken(); err != nil {
			return nil, err
		}
		if i == 0 {
			continue // the server's: set on the running server
		}
		s.Client = cluster.ConsulAgent{Node: n, BindIP: ips[i-1], ClientAddrs: []string{ips[i-1], "127.0.0.1"},
			HTTPS: ConsulHTTPSPort, GRPCTLS: ConsulGRPCTLSPort, SerfLAN: 8301}
		cfg, err := s.ClientConfig(consulDir, tokens[n])
		if err != nil {
			return nil, err
		}
		files[filepath.Join("client-config", n+".hcl")] = cfg
		files[filepath.Join("client-config", n+".token")] = tokens[n] + "\n"
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return nil, err
		}
	}
	return tokens, nil
}

// createConsulSecrets creates namespace consul and the Secrets
// consul-secure.yaml mounts.
func (c *Cluster) createConsulSecrets(ctx context.Context, nodes []string) error {
	ns := cluster.ConsulNamespace
	if _, err := c.kubectl(ctx, nil, "create", "namespace", ns); err != nil {
		return err
	}
	tls := func(name string) string { return "--from-file=" + name + "=" + c.dir("consul", "tls", name) }
	for _, s := range [][]string{
		{"consul-server-tls", tls("ca.crt"), tls("server.crt"), tls("server.key")},
		{"consul-client-tls", tls("ca.crt"), tls("client.crt"), tls("client.key")},
		{"consul-server-config", "--from-file=" + c.dir("consul", "server-config")},
		{"consul-client-config", "--from-file=" + c.dir("consul", "client-config")},
	} {
		if _, err := c.kubectl(ctx, nil, append([]string{"-n", ns, "create", "secret", "generic"}, s...)...); err != nil {
			return fmt.Errorf("create Secret %s/%s: %w", ns, s[0], err)
		}
	}
	return nil
}

// createAgentTokens creates, in the server's pod with the management
// token, each agent's token with the secret its configuration already
// holds: a node identity (node:write on its node, service:read), as the
// chart's server-acl-init gives its agents; then it hands the server its
// own. The script comes on stdin: no secret on the host's command lines.
func (c *Cluster) createAgentTokens(ctx context.Context, tokens map[string]string) error {
	var script strings.Builder
	script.WriteString("set -e\n")
	for node, secret := range tokens {
		fmt.Fprintf(&script, "consul acl token create -secret=%s -description 'agent token for %s' -node-identity=%s:%s >/dev/null\n",
			secret, node, node, consulDatacenter)
	}
	fmt.Fprintf(&script, "consul acl set-agent-token agent %s >/dev/null\n", tokens[consulServerNode])
	if _, err := c.kubectl(ctx, strings.NewReader(script.String()), "-n", cluster.ConsulNamespace,
		"exec", "-i", "consul-server-0", "--", "/bin/sh", "-s"); err != nil {
		return fmt.Errorf("create the Consul agents' tokens: %w", err)
	}
	return nil
}

// setupSecureMesh runs cluster.SecureMesh against the first worker's
// client agent, as an operator on the host would with .kind/env.
func (c *Cluster) setupSecureMesh(ctx context.Context) error {
	mgmt, err := c.ManagementToken()
	if err != nil {
		return err
	}
	cl, err := c.SecureConsulAPI(ctx, Workers[0], mgmt)
	if err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(c.ConsulCAFile())
	if err != nil {
		return err
	}
	env, err := c.consulEnv(ctx)
	if err != nil {
		return err
	}
	consulCLI := func(ctx context.Context, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, filepath.Join(c.Root, "bin", "consul"), args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("consul %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	// The auth method's Host is the API server as the Consul server's pod
	// reaches it.
	return cluster.SecureMesh{Root: c.Root, Clientset: cs, Consul: cl, ConsulCLI: consulCLI,
		APIServer: "https://kubernetes.default.svc", ConsulCA: ca}.Setup(ctx)
}

// consulEnv is what the consul CLI needs as the operator: the first
// worker's client agent over HTTPS, the CA, the management token's file.
func (c *Cluster) consulEnv(ctx context.Context) ([]string, error) {
	ip, err := c.NodeIP(ctx, Workers[0])
	if err != nil {
		return nil, err
	}
	return []string{"CONSUL_HTTP_ADDR=https://" + net.JoinHostPort(ip, strconv.Itoa(ConsulHTTPSPort)),
		"CONSUL_CACERT=" + c.ConsulCAFile(), "CONSUL_HTTP_TOKEN_FILE=" + c.ConsulTokenFile()}, nil
}
