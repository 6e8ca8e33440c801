package cluster

import "path/filepath"

// SecureConsul is a Consul server and client agent shaped like the official
// Helm chart's secure install: ACLs with default deny (the chart's
// global.acls.manageSystemACLs), TLS everywhere with plain HTTP and plain
// gRPC turned off (global.tls.enabled, httpsOnly), and the client agent's
// certificate either from the server (global.tls.enableAutoEncrypt) or signed
// by the harness's CA, as the chart's client-tls-init does. The local
// cluster (SECURE=1) boots one pair as processes; the kind cluster (package
// kindcluster) renders the same configuration for its pods, one client
// agent per node.
type SecureConsul struct {
	Datacenter  string
	AutoEncrypt bool
	Server      ConsulAgent
	Client      ConsulAgent
	// ServerJoin is where the client agent joins the server (retry_join);
	// empty: the server's BindIP and SerfLAN port.
	ServerJoin string
}

// ConsulAgent is where one Consul agent lives. A zero port is turned off;
// RPC is the server's only. BindIP may be a go-sockaddr template (such as
// {{ GetPrivateIP }}) where the address is only known in the agent's pod.
type ConsulAgent struct {
	Node        string
	BindIP      string   // serf and server RPC, also advertised
	ClientAddrs []string // HTTPS, gRPC TLS and DNS
	HTTPS       int
	GRPCTLS     int
	DNS         int
	SerfLAN     int
	RPC         int
	// Recursor is where its DNS sends names outside consul.: the cluster
	// DNS; empty: none.
	Recursor string
}

// secureConsulFiles are the pair's files under one directory (the
// cluster's consul/): the harness's CA and certificates in tls/, the
// agents' configurations and data, the management token and the CA bundle.
type secureConsulFiles struct{ dir string }

func (f secureConsulFiles) tlsDir() string         { return filepath.Join(f.dir, "tls") }
func (f secureConsulFiles) tls(name string) string { return filepath.Join(f.tlsDir(), name) }
func (f secureConsulFiles) caCert() string         { return f.tls("ca.crt") }
func (f secureConsulFiles) serverHCL() string      { return filepath.Join(f.dir, "server.hcl") }
func (f secureConsulFiles) clientHCL() string      { return filepath.Join(f.dir, "client.hcl") }
func (f secureConsulFiles) serverData() string     { return filepath.Join(f.dir, "server") }
func (f secureConsulFiles) clientData() string     { return filepath.Join(f.dir, "client") }

// managementToken holds the secret of the management token, mode 0600.
func (f secureConsulFiles) managementToken() string { return filepath.Join(f.dir, "management-token") }

// caBundle trusts the harness's CA and the Connect CA's roots: whoever talks
// HTTPS or gRPC to an auto-encrypt client agent needs the second.
func (f secureConsulFiles) caBundle() string { return filepath.Join(f.dir, "ca-bundle.pem") }

// hostPorts are the ports the pair binds, for the bind test before it
// starts and the check of what its processes hold.
func (s SecureConsul) hostPorts() []hostPort {
	var out []hostPort
	add := func(a ConsulAgent, comp string) {
		bind := func(proto, addr string, port int) {
			if port != 0 {
				out = append(out, hostPort{proto, addr, port, comp})
			}
		}
		bind("tcp", a.BindIP, a.SerfLAN)
		bind("udp", a.BindIP, a.SerfLAN)
		bind("tcp", a.BindIP, a.RPC)
		for _, addr := range a.ClientAddrs {
			bind("tcp", addr, a.HTTPS)
			bind("tcp", addr, a.GRPCTLS)
			bind("tcp", addr, a.DNS)
			bind("udp", addr, a.DNS)
		}
	}
	add(s.Server, "consul-server")
	add(s.Client, "consul-client")
	return out
}
