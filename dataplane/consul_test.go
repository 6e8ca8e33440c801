package dataplane

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	capi "github.com/hashicorp/consul/api"
)

// repoBin is a tool make built into the repository's bin/ (or, failing
// that, on $PATH): go test runs in the package's directory, so a plain
// `go test ./dataplane/` finds them without make test's PATH.
func repoBin(name string) (string, bool) {
	if p, err := filepath.Abs(filepath.Join("..", "bin", name)); err == nil {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, true
		}
	}
	p, err := exec.LookPath(name)
	return p, err == nil
}

// freePort is a TCP port nothing listens on now.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// consulAgents starts a real Consul server and a client agent joined to
// it, on loopback with free ports, as the local cluster lays them out, and
// returns an API client of the client agent. Both are stopped by their
// PIDs when the test ends.
func consulAgents(t testing.TB) *capi.Client {
	cl, _ := consulAgentsIn(t, nil, "127.0.0.1")
	return cl
}

// consulAgentsIn is consulAgents inside netns n (nil: this one), bound to
// bind; the client agent's HTTP API answers on every address of n, and the
// returned API client dials from inside n. The port is the client agent's
// HTTP port.
func consulAgentsIn(t testing.TB, n ns.NetNS, bind string) (*capi.Client, int) {
	t.Helper()
	bin, ok := repoBin("consul")
	if !ok {
		t.Skip("no consul in the repo's bin/ or on $PATH: make tools builds it")
	}
	dir := t.TempDir()
	// Free ports of this netns serve in n too: a fresh netns uses none.
	serf := freePort(t)
	server := fmt.Sprintf(`datacenter = "dc1"
node_name = "server"
server = true
bootstrap_expect = 1
data_dir = %q
bind_addr = %q
client_addr = %q
ports { http = %d, https = -1, grpc = -1, grpc_tls = -1, dns = -1, serf_lan = %d, serf_wan = -1, server = %d }
connect { enabled = true }
performance { raft_multiplier = 1 }
disable_update_check = true
`, filepath.Join(dir, "server"), bind, bind, freePort(t), serf, freePort(t))
	httpPort := freePort(t)
	clientAddr := bind
	if n != nil {
		clientAddr = "0.0.0.0" // the pods' netns reach it on their gateway
	}
	client := fmt.Sprintf(`datacenter = "dc1"
node_name = "node-1"
data_dir = %q
bind_addr = %q
client_addr = %q
ports { http = %d, https = -1, grpc = -1, grpc_tls = -1, dns = -1, serf_lan = %d }
retry_join = ["%s:%d"]
retry_interval = "1s"
disable_update_check = true
`, filepath.Join(dir, "client"), bind, clientAddr, httpPort, freePort(t), bind, serf)
	for name, cfg := range map[string]string{"server": server, "client": client} {
		path := filepath.Join(dir, name+".hcl")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "agent", "-config-file="+path)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		start := cmd.Start
		if n != nil {
			start = func() error { return n.Do(func(ns.NetNS) error { return cmd.Start() }) }
		}
		if err := start(); err != nil {
			t.Fatal(err)
		}
		pid, log := cmd.Process.Pid, logf.Name()
		t.Cleanup(func() {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(pid, syscall.SIGKILL)
				<-done
			}
			if t.Failed() {
				b, _ := os.ReadFile(log)
				t.Logf("consul %s log:\n%s", filepath.Base(log), tail(b, 3000))
			}
		})
	}
	cfg := capi.DefaultConfig()
	cfg.Address = net.JoinHostPort(bind, strconv.Itoa(httpPort))
	if n != nil {
		d := &net.Dialer{Timeout: 5 * time.Second}
		cfg.Transport = &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := n.Do(func(ns.NetNS) error {
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}
	}
	cl, err := capi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "Consul's leader elected, the client joined and the CA ready", func() error {
		if _, err := cl.Status().Leader(); err != nil {
			return err
		}
		if _, _, err := cl.Agent().ConnectCARoots(nil); err != nil {
			return err
		}
		ms, err := cl.Agent().Members(false)
		if err != nil || len(ms) != 2 {
			return fmt.Errorf("members %d (%v)", len(ms), err)
		}
		_, _, err = cl.Catalog().Node("node-1", nil)
		return err
	})
	return cl, httpPort
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// eventually retries f every 100 ms until it returns nil or d passes.
func eventually(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// meshPod is a service instance and its sidecar proxy, as the node agent
// registers them.
type meshPod struct {
	name, addr  string // service name; the pod's address
	app, public int    // the app's port (0: none); the proxy's public port
	mode        capi.ProxyMode
	vip         string // the tagged address "virtual", "" for none
	upstreams   []capi.Upstream
}

// register registers p as the node agent does (a TTL check on the
// service, an alias check on the proxy) and returns the proxy's ID.
func register(tb testing.TB, cl *capi.Client, p meshPod) string {
	tb.Helper()
	svcID, proxyID := p.name+"-1", p.name+"-1-sidecar-proxy"
	if err := cl.Agent().ServiceRegister(&capi.AgentServiceRegistration{ID: svcID, Name: p.name, Address: p.addr, Port: p.app,
		Check: &capi.AgentServiceCheck{CheckID: svcID + "/ready", TTL: "1h", Status: capi.HealthPassing}}); err != nil {
		tb.Fatal(err)
	}
	proxy := &capi.AgentServiceRegistration{Kind: capi.ServiceKindConnectProxy, ID: proxyID, Name: p.name + "-sidecar-proxy",
		Address: p.addr, Port: p.public,
		Proxy: &capi.AgentServiceConnectProxyConfig{DestinationServiceName: p.name, DestinationServiceID: svcID,
			LocalServiceAddress: "127.0.0.1", LocalServicePort: p.app, Mode: p.mode, Upstreams: p.upstreams},
		Checks: capi.AgentServiceChecks{{CheckID: proxyID + "/alias", AliasService: svcID}}}
	if p.mode == capi.ProxyModeTransparent {
		proxy.Proxy.TransparentProxy = &capi.TransparentProxyConfig{OutboundListenerPort: 15001}
	}
	if p.vip != "" {
		proxy.TaggedAddresses = map[string]capi.ServiceAddress{"virtual": {Address: p.vip, Port: 80}}
	}
	if err := cl.Agent().ServiceRegister(proxy); err != nil {
		tb.Fatal(err)
	}
	return proxyID
}
