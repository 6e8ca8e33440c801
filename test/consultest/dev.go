package consultest

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
)

// DevAgent starts bin/consul as a dev agent (a server in memory, Consul
// without Enterprise as the tests have it) on free loopback ports, waits
// for its leader, and returns its HTTP address and a client of it. It is
// stopped by its PID when the test ends; its log is shown if the test
// failed.
func DevAgent(t testing.TB) (string, *capi.Client) {
	t.Helper()
	port := FreePort(t)
	cfg := fmt.Sprintf(`node_name = "dev"
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
ports { http = %d, https = -1, grpc = -1, grpc_tls = -1, dns = -1, serf_lan = %d, serf_wan = -1, server = %d }
disable_update_check = true
`, port, FreePort(t), FreePort(t))
	StartAgent(t, t.TempDir(), "consul", cfg, []string{"-dev"}, nil)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cl, err := capi.NewClient(&capi.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		leader, err := cl.Status().Leader()
		if err == nil && leader != "" {
			return addr, cl
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for the dev agent's leader: %q, %v", leader, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
