package cluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/meshlet/meshlet/test/golden"
	"github.com/meshlet/meshlet/test/repobin"
)

// testSecureConsul is a secure pair on loopback with ports of its own from
// base up, clear of the local cluster's. base and base+2 mirror Consul's
// plain HTTP and gRPC defaults (8500, 8502) beside HTTPS and gRPC TLS
// (8501, 8503), and must stay closed.
func testSecureConsul(base int, autoEncrypt bool) SecureConsul {
	lo := "127.0.0.1"
	return SecureConsul{
		Datacenter:  consulDatacenter,
		AutoEncrypt: autoEncrypt,
		Server: ConsulAgent{Node: "consul-server", BindIP: lo, ClientAddrs: []string{lo},
			HTTPS: base + 1, GRPCTLS: base + 3, SerfLAN: base + 10, RPC: base + 11},
		Client: ConsulAgent{Node: "secure-node", BindIP: lo, ClientAddrs: []string{lo},
			HTTPS: base + 21, GRPCTLS: base + 23, DNS: base + 24, SerfLAN: base + 30},
	}
}

// The plain ports testSecureConsul leaves closed on each agent.
func (s SecureConsul) plainPorts() []hostPort {
	var out []hostPort
	for _, a := range []ConsulAgent{s.Server, s.Client} {
		out = append(out, hostPort{"tcp", a.ClientAddrs[0], a.HTTPS - 1, a.Node + " plain HTTP"},
			hostPort{"tcp", a.ClientAddrs[0], a.GRPCTLS - 1, a.Node + " plain gRPC"})
	}
	return out
}

// TestSecureConsulHCL pins both agents' configurations in both client
// modes; tokens are fixed stand-ins.
func TestSecureConsulHCL(t *testing.T) {
	f := secureConsulFiles{"/state/consul"}
	consul, haveConsul := repobin.Find("consul")
	for _, mode := range []struct {
		name        string
		autoEncrypt bool
	}{{"auto-encrypt", true}, {"client-cert", false}} {
		s := testSecureConsul(27100, mode.autoEncrypt)
		srv, err := s.serverHCL(f, "00000000-0000-4000-8000-00000000000a")
		if err != nil {
			t.Fatal(err)
		}
		cli, err := s.clientHCL(f, "00000000-0000-4000-8000-00000000000b")
		if err != nil {
			t.Fatal(err)
		}
		for _, out := range []struct{ agent, hcl string }{{"server", srv}, {"client", cli}} {
			name := "consul-secure/" + out.agent + "-" + mode.name + ".hcl"
			golden.Check(t, name, []byte(out.hcl))
			if haveConsul {
				consulValidate(t, consul, name, out.hcl)
			}
		}
	}
}

// consulValidate runs `consul validate`, which knows every field name of
// its version, on a configuration.
func consulValidate(t *testing.T, consul, name, hcl string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.hcl")
	if err := os.WriteFile(p, []byte(hcl), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(consul, "validate", p).CombinedOutput(); err != nil {
		t.Errorf("consul validate %s: %v\n%s", name, err, out)
	}
}
