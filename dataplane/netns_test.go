package dataplane

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/iptables"
	"github.com/meshlet/meshlet/test/netnstest"
)

// The node and its two pods: the node's netns routes between a veth to
// each pod and runs the Consul agents; each pod's netns has meshlet-cni's
// rules and a proxy running as UID 5995.
var (
	nodeA4, podA4 = netip.MustParseAddr("10.250.1.1"), netip.MustParseAddr("10.250.1.2")
	nodeB4, podB4 = netip.MustParseAddr("10.250.2.1"), netip.MustParseAddr("10.250.2.2")
	nodeA6, podA6 = netip.MustParseAddr("fd00:250:1::1"), netip.MustParseAddr("fd00:250:1::2")
	nodeB6, podB6 = netip.MustParseAddr("fd00:250:2::1"), netip.MustParseAddr("fd00:250:2::2")
	// serverVIP is static-server's virtual address (a ClusterIP).
	serverVIP = netip.MustParseAddr("10.96.50.50")
)

const (
	proxyUID = 5995
	appUID   = 1234
)

type node struct{ N, A, B ns.NetNS }

func newNode(t *testing.T) *node {
	t.Helper()
	n := &node{N: netnstest.NewNS(t), A: netnstest.NewNS(t), B: netnstest.NewNS(t)}
	nn := netnstest.Name(n.N)
	for _, p := range []struct {
		pod                 ns.NetNS
		dev                 string
		node4, pod4, n6, p6 netip.Addr
	}{{n.A, "veth-a", nodeA4, podA4, nodeA6, podA6}, {n.B, "veth-b", nodeB4, podB4, nodeB6, podB6}} {
		pn := netnstest.Name(p.pod)
		for _, c := range [][]string{
			{"link", "add", p.dev, "netns", nn, "type", "veth", "peer", "name", "eth0", "netns", pn},
			{"-n", nn, "addr", "add", p.node4.String() + "/24", "dev", p.dev},
			{"-n", nn, "addr", "add", p.n6.String() + "/64", "dev", p.dev, "nodad"},
			{"-n", nn, "link", "set", p.dev, "up"},
			{"-n", pn, "addr", "add", p.pod4.String() + "/24", "dev", "eth0"},
			{"-n", pn, "addr", "add", p.p6.String() + "/64", "dev", "eth0", "nodad"},
			{"-n", pn, "link", "set", "eth0", "up"},
			{"-n", pn, "route", "add", "default", "via", p.node4.String()},
			{"-n", pn, "-6", "route", "add", "default", "via", p.n6.String()},
		} {
			run(t, "ip", c...)
		}
	}
	run(t, "ip", "netns", "exec", nn, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	return n
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// redirect applies meshlet-cni's rules for a pod of the default
// consul-k8s shape to netns n.
func redirect(t *testing.T, n ns.NetNS) {
	t.Helper()
	p, err := iptables.Config{ProxyUserID: strconv.Itoa(proxyUID), ProxyInboundPort: 20000, ProxyOutboundPort: 15001}.Validate()
	if err != nil {
		t.Fatal(err)
	}
	a := iptables.Applier{Mode: iptables.ModeNFT, LockDir: t.TempDir()}
	if err := a.Apply(n.Path(), p, []iptables.Family{iptables.IPv4, iptables.IPv6}); err != nil {
		t.Fatal(err)
	}
}

// TestTransparentProxyInNetns: two pods with meshlet-cni's rules, each
// with `meshlet proxy` as UID 5995, on real Consul agents. The client app
// dials the server's virtual address, and its pod IP (a StatefulSet's pod
// through a headless Service), and reaches the server app through both
// proxies; intentions apply to the next connection, by either address; other
// destinations pass through, IPv6 included; a caller outside the mesh
// cannot reach the server's app port.
func TestTransparentProxyInNetns(t *testing.T) {
	netnstest.RequireRoot(t)
	n := newNode(t)
	redirect(t, n.A)
	redirect(t, n.B)
	cl, port := consulAgentsIn(t, n.N, nodeA4.String())
	netnstest.Serve(t, n.B, ":8080", "static-server")
	// Outside the mesh, on one address each: reaching one proves the
	// proxy read the original destination, family included.
	netnstest.Serve(t, n.N, netnstest.HostPort(nodeA4, 9999), "plain-v4")
	netnstest.Serve(t, n.N, netnstest.HostPort(nodeA6, 9999), "plain-v6")
	for _, p := range []struct {
		pod     ns.NetNS
		proxyID string
		gateway netip.Addr
	}{
		// Each pod has its own netns: the node agent's registrations as they are.
		{n.B, register(t, cl, meshPod{name: "static-server", ip: podB4.String(), app: 8080, tproxy: true,
			vip: serverVIP.String()}).Proxy.ID, nodeB4},
		{n.A, register(t, cl, meshPod{name: "static-client", ip: podA4.String(), app: 8080, tproxy: true}).Proxy.ID, nodeA4},
	} {
		netnstest.StartAs(t, p.pod, proxyUID, proxyArgsEnv+"="+strings.Join([]string{"-proxy-id", p.proxyID,
			"-http-addr", netnstest.HostPort(p.gateway, port), "-metrics-addr", "127.0.0.1:20200", "-log-level", "debug"}, " "))
	}
	vip := netnstest.HostPort(serverVIP, 80)
	const served = "static-server 127.0.0.1:8080" // the server proxy dials the app on loopback
	eventually(t, 60*time.Second, "the client app to reach the server app through both proxies", func() error {
		got, err := netnstest.DialAs(t, n.A, appUID, vip)
		if err != nil || got != served {
			return fmt.Errorf("got %q, %v", got, err)
		}
		return nil
	})
	// The server pod's own IP, as a StatefulSet's client dials web-0.web
	// through a headless Service: through both proxies, to that instance.
	podIP := netnstest.HostPort(podB4, 8080)
	eventually(t, 10*time.Second, "the client app to reach the server pod's IP through both proxies", func() error {
		got, err := netnstest.DialAs(t, n.A, appUID, podIP)
		if err != nil || got != served {
			return fmt.Errorf("got %q, %v", got, err)
		}
		return nil
	})
	for _, c := range []struct {
		name string
		from ns.NetNS
		uid  uint32
		addr string
		want string // "" for no reply
	}{
		{"v4 passthrough to a destination outside the mesh", n.A, appUID, netnstest.HostPort(nodeA4, 9999), "plain-v4"},
		{"v6 passthrough: the original destination read over IPv6", n.A, appUID, netnstest.HostPort(nodeA6, 9999), "plain-v6"},
		{"a caller outside the mesh gets nothing from the server's app port", n.N, 0, netnstest.HostPort(podB4, 8080), ""},
		{"nor over IPv6", n.N, 0, netnstest.HostPort(podB6, 8080), ""},
	} {
		got, err := netnstest.DialAs(t, c.from, c.uid, c.addr)
		if c.want == "" {
			if err == nil || !strings.Contains(err.Error(), "exit status 52") {
				t.Errorf("%s: got %q, %v; want an empty reply", c.name, got, err)
			}
		} else if err != nil || !strings.HasPrefix(got, c.want+" ") {
			t.Errorf("%s: got %q, %v; want %q", c.name, got, err, c.want)
		}
	}

	if _, err := cl.Connect().IntentionUpsert(&capi.Intention{SourceName: "static-client", DestinationName: "static-server",
		Action: capi.IntentionActionDeny}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the deny intention: an empty reply", func() error {
		got, err := netnstest.DialAs(t, n.A, appUID, vip)
		if err == nil || !strings.Contains(err.Error(), "exit status 52") {
			return fmt.Errorf("got %q, %v", got, err)
		}
		return nil
	})
	if got, err := netnstest.DialAs(t, n.A, appUID, podIP); err == nil || !strings.Contains(err.Error(), "exit status 52") {
		t.Errorf("the deny intention, the server pod's IP dialed: got %q, %v; want an empty reply", got, err)
	}
	if _, err := cl.Connect().IntentionDeleteExact("static-client", "static-server", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the intention deleted: served again", func() error {
		got, err := netnstest.DialAs(t, n.A, appUID, vip)
		if err != nil || got != served {
			return fmt.Errorf("got %q, %v", got, err)
		}
		return nil
	})
}
