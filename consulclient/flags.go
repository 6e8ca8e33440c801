// Package consulclient is how meshlet's node agent and proxy reach the
// node's Consul client agent: one set of flags, with the consul CLI's
// environment as defaults, and the API client built from them.
package consulclient

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/contract"
)

// Flags reach the node's Consul client agent. The defaults are the consul
// CLI's environment (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
// CONSUL_HTTP_TOKEN_FILE, CONSUL_CACERT, CONSUL_TLS_SERVER_NAME), else the
// node's IP ($HOST_IP) on port 8500.
type Flags struct {
	Addr, CAFile, TokenFile, ServerName string
	// Token, set by code and never by a flag (a login's), replaces
	// TokenFile: it must not reach a command line or a file.
	Token string
	// CAPEM is the CA in PEM from $CONSUL_CACERT_PEM, as the webhook gives
	// it to a sidecar, in place of a file: no flag, the PEM is too long.
	CAPEM string
	// Roots, set by code, verifies the agent's certificate instead of the
	// CA: the CA and the Connect CA's roots, kept current
	// (NewConnectRoots).
	Roots *ConnectRoots
	// Namespace, set by code, is the Consul Enterprise namespace every
	// request carries (ns=) unless it names another; "": none, as Consul
	// without Enterprise namespaces requires (it refuses any ns=).
	Namespace string
}

// Register adds -http-addr, -ca-file, -tls-server-name and -token-file to
// fs; tokenFor says what the token is used for, in the help text.
func (f *Flags) Register(fs *flag.FlagSet, tokenFor string) {
	def := os.Getenv("CONSUL_HTTP_ADDR")
	if def == "" && os.Getenv(contract.EnvHostIP) != "" {
		def = net.JoinHostPort(os.Getenv(contract.EnvHostIP), strconv.Itoa(contract.ConsulAgentHTTPPort))
	}
	fs.StringVar(&f.Addr, "http-addr", def, "the node's Consul client agent, [scheme://]host:port (default $CONSUL_HTTP_ADDR, else $HOST_IP:8500)")
	fs.StringVar(&f.CAFile, "ca-file", os.Getenv("CONSUL_CACERT"), "CA of the Consul agent's HTTPS certificate (or $"+contract.EnvConsulCACertPEM+", the CA itself in PEM)")
	f.CAPEM = os.Getenv(contract.EnvConsulCACertPEM)
	fs.StringVar(&f.ServerName, "tls-server-name", os.Getenv("CONSUL_TLS_SERVER_NAME"), "server name checked in the Consul agent's certificate")
	fs.StringVar(&f.TokenFile, "token-file", os.Getenv("CONSUL_HTTP_TOKEN_FILE"), "file holding the ACL token "+tokenFor+" (or $CONSUL_HTTP_TOKEN)")
}

// Validate checks what Register's flags cannot.
func (f Flags) Validate() error {
	if f.Addr == "" {
		return errors.New("-http-addr is empty: give the node's Consul agent address, or set $HOST_IP (the downward API's status.hostIP)")
	}
	if f.CAFile != "" && f.CAPEM != "" {
		return fmt.Errorf("-ca-file %s and $%s both give the Consul agent's CA: give one", f.CAFile, contract.EnvConsulCACertPEM)
	}
	return nil
}

// Client is the API client. timeout bounds each request (0: none, for a
// client whose blocking queries wait minutes by design).
func (f Flags) Client(timeout time.Duration) (*capi.Client, error) {
	cc := capi.DefaultConfig()
	addr := f.Addr
	if scheme, rest, ok := strings.Cut(addr, "://"); ok {
		cc.Scheme, addr = scheme, rest
	}
	cc.Address = addr
	if f.CAFile != "" || f.CAPEM != "" {
		cc.TLSConfig.CAFile, cc.TLSConfig.CAPem = f.CAFile, []byte(f.CAPEM)
		if cc.Scheme == "http" && !strings.Contains(f.Addr, "://") {
			cc.Scheme = "https"
		}
	}
	if f.ServerName != "" {
		cc.TLSConfig.Address = f.ServerName
	}
	if f.TokenFile != "" {
		cc.TokenFile = f.TokenFile
	}
	if f.Token != "" {
		cc.Token, cc.TokenFile = f.Token, ""
	}
	if f.Namespace != "" {
		cc.Namespace = f.Namespace
	}
	hc, err := capi.NewHttpClient(cc.Transport, cc.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", f.Addr, err)
	}
	if f.Roots != nil {
		cc.Scheme = "https"
		hc = &http.Client{Transport: f.Roots.Transport(f.ServerName)}
	}
	hc.Timeout = timeout
	cc.HttpClient = hc
	c, err := capi.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", f.Addr, err)
	}
	return c, nil
}
