package cluster

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"text/template"
)

// secureConsulHCL is both agents' configuration. Clients of the HTTPS and
// gRPC ports (pods, the node agent) carry no client certificate, so only
// internal RPC verifies incoming ones, as in the chart. use_auto_cert is the
// chart's too: Consul documents it as what puts the auto-encrypt
// certificate on gRPC, though 1.22's gRPC TLS listener falls back to that
// certificate without it.
var secureConsulHCL = template.Must(template.New("consul").Funcs(template.FuncMap{
	"q":    strconv.Quote,
	"port": hclPort,
	"join": strings.Join,
}).Parse(`datacenter = {{q .DC}}
node_name = {{q .Agent.Node}}
server = {{.Server}}
{{- if .Server}}
bootstrap_expect = 1
{{- end}}
data_dir = {{q .DataDir}}
bind_addr = {{q .Agent.BindIP}}
advertise_addr = {{q .Agent.BindIP}}
client_addr = {{q (join .Agent.ClientAddrs " ")}}
ports {
  http = -1
  https = {{port .Agent.HTTPS}}
  grpc = -1
  grpc_tls = {{port .Agent.GRPCTLS}}
  dns = {{port .Agent.DNS}}
  serf_lan = {{port .Agent.SerfLAN}}
{{- if .Server}}
  serf_wan = -1
{{- end}}
  server = {{port .ServerRPC}}
}
{{- with .Join}}
retry_join = [{{q .}}]
retry_interval = "1s"
{{- end}}
{{- with .Agent.Recursor}}
recursors = [{{q .}}]
{{- end}}
acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = true
  tokens {
    {{if .Server}}initial_management{{else}}agent{{end}} = {{q .Token}}
  }
}
tls {
  defaults {
    ca_file = {{q .CAFile}}
{{- if .CertFile}}
    cert_file = {{q .CertFile}}
    key_file = {{q .KeyFile}}
{{- end}}
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
  https {
    verify_incoming = false
  }
  grpc {
    verify_incoming = false
{{- if and .AutoEncrypt (not .Server)}}
    use_auto_cert = true
{{- end}}
  }
}
{{- if .AutoEncrypt}}
auto_encrypt {
{{- if .Server}}
  allow_tls = true
{{- else}}
  tls = true
  ip_san = [{{q .Agent.BindIP}}]
{{- end}}
}
{{- end}}
{{- if .Server}}
connect { enabled = true }
performance { raft_multiplier = 1 }
ui_config { enabled = false }
{{- end}}
disable_update_check = true
`))

// hclPort turns an unset port off.
func hclPort(p int) int {
	if p == 0 {
		return -1
	}
	return p
}

type consulHCLData struct {
	DC                        string
	Agent                     ConsulAgent
	Server, AutoEncrypt       bool
	DataDir, Join             string
	ServerRPC                 int
	Token                     string
	CAFile, CertFile, KeyFile string
}

func renderConsulHCL(d consulHCLData) (string, error) {
	var b bytes.Buffer
	if err := secureConsulHCL.Execute(&b, d); err != nil {
		return "", fmt.Errorf("render the Consul configuration of %s: %w", d.Agent.Node, err)
	}
	return b.String(), nil
}

// serverHCL is the server's configuration; token becomes its
// initial_management token.
func (s SecureConsul) serverHCL(f secureConsulFiles, token string) (string, error) {
	return renderConsulHCL(consulHCLData{
		DC: s.Datacenter, Agent: s.Server, Server: true, AutoEncrypt: s.AutoEncrypt,
		DataDir: f.serverData(), Token: token, ServerRPC: s.Server.RPC,
		CAFile: f.caCert(), CertFile: f.tls("server.crt"), KeyFile: f.tls("server.key"),
	})
}

// clientHCL is the client agent's configuration with its agent token. With
// auto-encrypt it holds only the CA: its certificate comes from the server.
func (s SecureConsul) clientHCL(f secureConsulFiles, agentToken string) (string, error) {
	d := consulHCLData{
		DC: s.Datacenter, Agent: s.Client, AutoEncrypt: s.AutoEncrypt,
		DataDir: f.clientData(), Token: agentToken, CAFile: f.caCert(),
		Join: s.ServerJoin,
		// An auto-encrypt client agent asks the servers it joins for its
		// certificate at their serf address with its own server port.
		ServerRPC: s.Server.RPC,
	}
	if d.Join == "" {
		d.Join = net.JoinHostPort(s.Server.BindIP, strconv.Itoa(s.Server.SerfLAN))
	}
	if !s.AutoEncrypt {
		d.CertFile, d.KeyFile = f.tls("client.crt"), f.tls("client.key")
	}
	return renderConsulHCL(d)
}

// ServerConfig is the server's configuration with its files under dir
// (tls/, server/ for its data), token its initial_management token.
func (s SecureConsul) ServerConfig(dir, token string) (string, error) {
	return s.serverHCL(secureConsulFiles{dir}, token)
}

// ClientConfig is the client agent's configuration with its files under
// dir (tls/, client/ for its data) and its agent token.
func (s SecureConsul) ClientConfig(dir, agentToken string) (string, error) {
	return s.clientHCL(secureConsulFiles{dir}, agentToken)
}
