package cluster

import "path/filepath"

// secureConsul is a Consul server and client agent shaped like the official
// Helm chart's secure install: ACLs with default deny (the chart's
// global.acls.manageSystemACLs), TLS everywhere with plain HTTP and plain
// gRPC turned off (global.tls.enabled, httpsOnly), and the client agent's
// certificate either from the server (global.tls.enableAutoEncrypt) or signed
// by the harness's CA, as the chart's client-tls-init does. cluster-up
// still runs consul.go's plain pair: SECURE=1, which hands one of these to
// startConsul, is the next step of issue 20.
type secureConsul struct {
	Datacenter  string
	AutoEncrypt bool
	Server      consulAgent
	Client      consulAgent
}

// consulAgent is where one Consul agent lives. A zero port is turned off;
// RPC is the server's only.
type consulAgent struct {
	Node        string
	BindIP      string   // serf and server RPC, also advertised
	ClientAddrs []string // HTTPS, gRPC TLS and DNS
	HTTPS       int
	GRPCTLS     int
	DNS         int
	SerfLAN     int
	RPC         int
}

// secureConsulFiles are the pair's files under one directory (the
// cluster's consul/): the harness's CA and certificates in tls/, the
// agents' configurations and data, the management token and the CA bundle.
type secureConsulFiles struct{ dir string }

func (f secureConsulFiles) tlsDir() string         { return filepath.Join(f.dir, "tls") }
func (f secureConsulFiles) tls(name string) string { return filepath.Join(f.tlsDir(), name) }
func (f secureConsulFiles) caCert() string         { return f.tls("ca.crt") }
func (f secureConsulFiles) serverData() string     { return filepath.Join(f.dir, "server") }
func (f secureConsulFiles) clientData() string     { return filepath.Join(f.dir, "client") }
