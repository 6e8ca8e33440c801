package iptables

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/meshlet/meshlet/test/netnstest"
)

// TestDNSRedirectTraffic proves both meanings of ConsulDNSPort with real
// queries in real namespaces, over UDP and TCP: without a port every DNS
// query of the pod, whatever nameserver it names, reaches ConsulDNSIP
// (consul-k8s' client-agent form, and meshlet's); with one, only queries
// to ConsulDNSIP go, to that port, and the others are left to the rest of
// the rules (TCP to the proxy's outbound listener, UDP out as it is).
func TestDNSRedirectTraffic(t *testing.T) {
	netnstest.RequireRoot(t)
	consulDNS, clusterDNS := netnstest.PeerIP4, netnstest.OtherIP4
	hp := netnstest.HostPort
	base := Config{ProxyUserID: "5995", ProxyInboundPort: 20000, ProxyOutboundPort: 15001}
	type query struct{ to, want string }
	for _, tc := range []struct {
		name    string
		ip      string
		port    int
		queries []query
	}{
		{"every query", consulDNS.String(), 0, []query{
			{hp(clusterDNS, 53), "consul-dns"},
			{hp(consulDNS, 53), "consul-dns"},
		}},
		{"queries to the address", consulDNS.String(), 5353, []query{
			{hp(consulDNS, 53), "consul-dns-5353"},
			{hp(clusterDNS, 53), "cluster-dns"},
		}},
		{"none", "", 0, []query{
			{hp(clusterDNS, 53), "cluster-dns"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := netnstest.NewNet(t)
			cfg := base
			cfg.ConsulDNSIP, cfg.ConsulDNSPort = tc.ip, tc.port
			if err := (Applier{Mode: ModeNFT, LockDir: t.TempDir()}).Apply(n.Pod.Path(), mustPlan(t, cfg), []Family{IPv4}); err != nil {
				t.Fatal(err)
			}
			netnstest.Serve(t, n.Pod, ":15001", "outbound")
			for _, s := range []struct{ addr, name string }{
				{hp(consulDNS, 53), "consul-dns"}, {hp(consulDNS, 5353), "consul-dns-5353"}, {hp(clusterDNS, 53), "cluster-dns"},
			} {
				netnstest.Serve(t, n.Peer, s.addr, s.name)
				serveUDP(t, n.Peer, s.addr, s.name)
			}
			for _, q := range tc.queries {
				if got := askUDP(t, n.Pod, q.to); got != q.want {
					t.Errorf("UDP to %s reached %q, want %q", q.to, got, q.want)
				}
				// TCP the DNS rules do not take goes to the proxy, like any
				// other outbound TCP.
				wantTCP := q.want
				if q.want == "cluster-dns" {
					wantTCP = "outbound"
				}
				got, err := netnstest.DialAs(t, n.Pod, 1234, q.to)
				if err != nil {
					t.Fatal(err)
				}
				if got != wantTCP && !strings.HasPrefix(got, wantTCP+" ") {
					t.Errorf("TCP to %s reached %q, want %q", q.to, got, wantTCP)
				}
			}
		})
	}
}

// serveUDP answers every datagram to addr inside netns with name.
func serveUDP(t *testing.T, n ns.NetNS, addr, name string) {
	t.Helper()
	var pc net.PacketConn
	if err := n.Do(func(ns.NetNS) error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, netnstest.Name(n), err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
}

// askUDP sends one datagram to addr from inside netns and returns the
// answer; the reply passes the reverse translation, as a resolver's must.
func askUDP(t *testing.T, n ns.NetNS, addr string) string {
	t.Helper()
	var got string
	if err := n.Do(func(ns.NetNS) error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("q")); err != nil {
			return err
		}
		buf := make([]byte, 64)
		k, err := c.Read(buf)
		if err != nil {
			return err
		}
		got = string(buf[:k])
		return nil
	}); err != nil {
		t.Fatalf("UDP to %s: %v", addr, err)
	}
	return got
}
