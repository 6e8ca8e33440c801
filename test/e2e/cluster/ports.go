package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// hostPort is a fixed port a component binds in the host's network
// namespace. A taken one makes the component exit or retry, which Up would
// only notice when its readiness wait times out, so Up bind-tests them all
// before it starts anything.
type hostPort struct {
	proto     string // "tcp" or "udp"
	addr      string // the address the component binds
	port      int
	component string
}

// kubePorts are the ports the Kubernetes components bind, as
// components.go configures them, and plainConsulPorts those of consul.go's
// Consul pair; a secure cluster's Consul binds localSecureConsul's instead
// (Cluster.fixedPorts; TestUpClearsCrashedRun checks the lists against what
// the running components hold). Ports from the ephemeral range, such as
// containerd's streaming server, are picked by the kernel and not listed.
var kubePorts = func() []hostPort {
	lo := "127.0.0.1"
	return []hostPort{
		tcp(lo, 2379, "etcd"), tcp(lo, 2380, "etcd"), tcp(lo, 2381, "etcd"),
		tcp(NodeIP, 6443, "kube-apiserver"),
		tcp(lo, 10257, "kube-controller-manager"),
		tcp(lo, 10259, "kube-scheduler"),
		tcp(NodeIP, 10250, "kubelet"), tcp(lo, 10248, "kubelet"),
		tcp(lo, 10249, "kube-proxy"), tcp(lo, 10256, "kube-proxy"),
	}
}()

var plainConsulPorts = func() []hostPort {
	lo := "127.0.0.1"
	return []hostPort{
		tcp(NodeIP, consulServerRPC, "consul-server"),
		tcp(NodeIP, consulServerSerf, "consul-server"), udp(NodeIP, consulServerSerf, "consul-server"),
		tcp(NodeIP, ConsulServerWAN, "consul-server"), udp(NodeIP, ConsulServerWAN, "consul-server"),
		tcp(lo, consulServerHTTP, "consul-server"),
		tcp(NodeIP, consulClientSerf, "consul-client"), udp(NodeIP, consulClientSerf, "consul-client"),
		tcp(NodeIP, ConsulHTTPPort, "consul-client"), tcp(lo, ConsulHTTPPort, "consul-client"),
		tcp(NodeIP, ConsulGRPCPort, "consul-client"), tcp(lo, ConsulGRPCPort, "consul-client"),
		tcp(NodeIP, consulClientDNS, "consul-client"), tcp(lo, consulClientDNS, "consul-client"),
		udp(NodeIP, consulClientDNS, "consul-client"), udp(lo, consulClientDNS, "consul-client"),
	}
}()

func tcp(addr string, port int, comp string) hostPort { return hostPort{"tcp", addr, port, comp} }
func udp(addr string, port int, comp string) hostPort { return hostPort{"udp", addr, port, comp} }

// fixedPorts are the ports c's components bind.
func (c *Cluster) fixedPorts() []hostPort {
	if c.Secure {
		return append(slices.Clone(kubePorts), localSecureConsul().hostPorts()...)
	}
	return append(slices.Clone(kubePorts), plainConsulPorts...)
}

// checkPortsFree bind-tests every port and names each one that is taken
// and, when /proc shows it, the process holding it.
func checkPortsFree(ports []hostPort) error {
	var errs []error
	for _, p := range ports {
		err := bindTest(p)
		if err == nil {
			continue
		}
		what := fmt.Sprintf("port %d/%s on %s (%s)", p.port, p.proto, p.addr, p.component)
		if errors.Is(err, syscall.EADDRINUSE) {
			what += " is taken" + holderText(p)
		} else {
			what = "cannot bind-test " + what
		}
		errs = append(errs, fmt.Errorf("%s: %w", what, err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("local cluster ports unavailable, nothing started: %w", errors.Join(errs...))
	}
	return nil
}

// bindTest binds the port the way the (Go) components do: SO_REUSEADDR on
// TCP, so connections of an earlier run in TIME_WAIT do not count. The
// node address lives on the bridge, which Up creates later; IP_FREEBIND
// lets the bind run before it exists, and the kernel still refuses it when
// a wildcard listener holds the port.
func bindTest(p hostPort) error {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		})
		return errors.Join(err, serr)
	}}
	addr := net.JoinHostPort(p.addr, strconv.Itoa(p.port))
	switch p.proto {
	case "tcp":
		l, err := lc.Listen(context.Background(), "tcp4", addr)
		if err != nil {
			return err
		}
		return l.Close()
	case "udp":
		c, err := lc.ListenPacket(context.Background(), "udp4", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	return fmt.Errorf("unknown protocol %q", p.proto)
}

// holderText names the processes whose sockets hold p, or nothing if /proc
// does not tell (another user's process, a socket mid-close).
func holderText(p hostPort) string {
	want, err := netip.ParseAddr(p.addr)
	if err != nil {
		return ""
	}
	socks, err := procSockets(p.proto)
	if err != nil {
		return ""
	}
	inodes := map[string]bool{}
	for _, s := range socks {
		if s.port == p.port && s.inode != "0" && (s.addr == want || s.addr.IsUnspecified() || want.IsUnspecified()) {
			inodes[s.inode] = true
		}
	}
	text := ""
	for _, h := range socketOwners(inodes) {
		text += fmt.Sprintf(" by pid %d (%s)", h.pid, h.exe)
	}
	return text
}

// podPorts are host ports that host-network pods bind (the node agent's
// HTTP port): bind-tested by Up with fixedPorts, though no harness process
// holds them.
var podPorts = []hostPort{{"tcp", NodeIP, AgentPort, "meshlet-agent"}}
