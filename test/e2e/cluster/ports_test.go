package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCheckPortsFreeNamesTakenPort(t *testing.T) {
	cases := []struct {
		name, network, listen, check, proto string
	}{
		{"tcp on loopback", "tcp4", "127.0.0.1:0", "127.0.0.1", "tcp"},
		{"udp on loopback", "udp4", "127.0.0.1:0", "127.0.0.1", "udp"},
		// The node address is not up yet when Up checks; a wildcard
		// listener still takes the port from it.
		{"tcp wildcard vs node address", "tcp4", "0.0.0.0:0", NodeIP, "tcp"},
		{"dual-stack tcp6 wildcard vs loopback", "tcp", "[::]:0", "127.0.0.1", "tcp"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			port, release := occupy(t, tc.network, tc.listen)
			p := hostPort{tc.proto, tc.check, port, "etcd"}
			err := checkPortsFree([]hostPort{p})
			if err == nil {
				t.Fatalf("%+v: a taken port passes the check", p)
			}
			for _, want := range []string{fmt.Sprintf("port %d/%s on %s (etcd) is taken", port, tc.proto, tc.check),
				fmt.Sprintf("by pid %d (", os.Getpid())} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q: %v", want, err)
				}
			}
			release()
			if err := checkPortsFree([]hostPort{p}); err != nil {
				t.Errorf("after release: %v", err)
			}
		})
	}
}

// Up must refuse at once, before it records or starts anything.
func TestUpFailsAtOnceOnTakenPort(t *testing.T) {
	port, _ := occupy(t, "tcp4", "127.0.0.1:0")
	saved := kubePorts
	kubePorts = []hostPort{{"tcp", "127.0.0.1", port, "kube-scheduler"}}
	t.Cleanup(func() { kubePorts = saved })

	c := New(t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	err := c.Up(ctx)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("port %d/tcp", port)) {
		t.Fatalf("Up with port %d taken: %v", port, err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("Up took %s to notice", d)
	}
	if _, err := os.Stat(c.Dir); err == nil {
		t.Errorf("Up created %s before failing", c.Dir)
	}
}

// occupy holds a port, as some unrelated program would, until release or
// the end of the test.
func occupy(t *testing.T, network, addr string) (port int, release func()) {
	t.Helper()
	if strings.HasPrefix(network, "udp") {
		c, err := net.ListenPacket(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.LocalAddr().(*net.UDPAddr).Port, func() { c.Close() }
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().(*net.TCPAddr).Port, func() { l.Close() }
}

// checkFixedPorts compares c.fixedPorts() with what the running components
// hold: a port added to a component's flags but not to the list would
// again make Up time out instead of naming it.
func checkFixedPorts(t *testing.T, c *Cluster) {
	t.Helper()
	checkHeldPorts(t, c, c.fixedPorts(), "fixedPorts")
}

// checkHeldPorts compares want with the ports outside the ephemeral range
// that c's recorded components hold; list names want in the errors.
func checkHeldPorts(t *testing.T, c *Cluster, want []hostPort, list string) {
	t.Helper()
	held := heldPorts(t, c)
	wanted := map[hostPort]bool{}
	for _, p := range want {
		wanted[p] = true
		if !held[p] {
			t.Errorf("%s lists %+v, which no component holds", list, p)
		}
	}
	for p := range held {
		if !wanted[p] {
			t.Errorf("%+v is held but not in %s", p, list)
		}
	}
}

// heldPorts are the ports outside the ephemeral range that c's recorded
// components hold (listening TCP, unconnected UDP).
func heldPorts(t *testing.T, c *Cluster) map[hostPort]bool {
	t.Helper()
	var lo, hi int
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if _, err2 := fmt.Sscan(string(b), &lo, &hi); err != nil || err2 != nil {
		t.Fatalf("ephemeral port range: %v %v", err, err2)
	}
	socks := map[string][]procSocket{}
	for _, proto := range []string{"tcp", "udp"} {
		if socks[proto], err = procSockets(proto); err != nil {
			t.Fatal(err)
		}
	}
	held := map[hostPort]bool{}
	files, _ := filepath.Glob(filepath.Join(c.Dir, "pids", "*.pid"))
	for _, f := range files {
		pid, _, err := readPidFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(filepath.Base(f), ".pid")
		inodes := socketInodes(pid)
		for proto, ss := range socks {
			for _, s := range ss {
				if inodes[s.inode] && s.bound() && (s.port < lo || s.port > hi) {
					held[hostPort{proto, s.addr.String(), s.port, name}] = true
				}
			}
		}
	}
	return held
}
