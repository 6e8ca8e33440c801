// Package netnstest builds throwaway network namespaces for tests that need
// real netns and real iptables: a "pod" and a "peer" joined by a veth pair,
// listeners that say who they are and where a connection was headed
// (SO_ORIGINAL_DST), and a dialer that connects as a given UID.
//
// Addresses live only inside the namespaces the tests create.
package netnstest

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/meshlet/meshlet/dataplane/originaldst"
)

// Addresses of the pod and the peer, and a second peer subnet routed via
// the peer (a destination for CIDR exclusions).
var (
	PodIP4   = netip.MustParseAddr("10.248.0.2")
	PeerIP4  = netip.MustParseAddr("10.248.0.1")
	OtherIP4 = netip.MustParseAddr("10.248.1.1")
	PodIP6   = netip.MustParseAddr("fd00:248::2")
	PeerIP6  = netip.MustParseAddr("fd00:248::1")
	OtherIP6 = netip.MustParseAddr("fd00:249::1")
)

// RequireRoot skips a test that needs root; make test reports every skip
// loudly and CI, which runs as root, fails on any.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and iptables rules")
	}
}

// NewNS creates a network namespace with loopback up, removed at cleanup.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		_ = testutils.UnmountNS(n)
	})
	ip(t, "-n", Name(n), "link", "set", "lo", "up")
	return n
}

// Name is the netns name ip(8) knows it by.
func Name(n ns.NetNS) string { return filepath.Base(n.Path()) }

// Net is a pod netns and a peer netns on one veth pair, dual-stack.
type Net struct{ Pod, Peer ns.NetNS }

// NewNet builds the pod and the peer.
func NewNet(t testing.TB) *Net {
	t.Helper()
	n := &Net{Pod: NewNS(t), Peer: NewNS(t)}
	pod, peer := Name(n.Pod), Name(n.Peer)
	ip(t, "link", "add", "eth0", "netns", pod, "type", "veth", "peer", "name", "eth0", "netns", peer)
	for _, c := range [][]string{
		{"-n", pod, "addr", "add", PodIP4.String() + "/24", "dev", "eth0"},
		{"-n", pod, "addr", "add", PodIP6.String() + "/64", "dev", "eth0", "nodad"},
		{"-n", pod, "link", "set", "eth0", "up"},
		{"-n", pod, "route", "add", "10.248.1.0/24", "via", PeerIP4.String()},
		{"-n", pod, "route", "add", "fd00:249::/64", "via", PeerIP6.String()},
		{"-n", peer, "addr", "add", PeerIP4.String() + "/24", "dev", "eth0"},
		{"-n", peer, "addr", "add", OtherIP4.String() + "/24", "dev", "lo"},
		{"-n", peer, "addr", "add", PeerIP6.String() + "/64", "dev", "eth0", "nodad"},
		{"-n", peer, "addr", "add", OtherIP6.String() + "/64", "dev", "lo", "nodad"},
		{"-n", peer, "link", "set", "eth0", "up"},
	} {
		ip(t, c...)
	}
	return n
}

func ip(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Serve listens on addr inside netns. Each connection is answered with
// "<name> <original destination>" and closed.
func Serve(t testing.TB, n ns.NetNS, addr, name string) {
	t.Helper()
	var ln net.Listener
	err := n.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, Name(n), err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = bufio.NewReader(c).ReadString('\n')
				dst, err := OriginalDst(c.(*net.TCPConn))
				orig := dst.String()
				if err != nil {
					orig = "none"
				}
				fmt.Fprintf(c, "%s %s\n", name, orig)
			}()
		}
	}()
}

// OriginalDst is where a connection was headed before a REDIRECT or DNAT
// changed it (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST).
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) { return originaldst.Get(c) }

const helperEnv = "MESHLET_NETNSTEST_DIAL"

// HelperMain must be called first in TestMain: in the dialer subprocess it
// dials and exits.
func HelperMain() {
	addr := os.Getenv(helperEnv)
	if addr == "" {
		return
	}
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(7)
	}
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintln(c, "hello")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, "read:", err)
		os.Exit(52)
	}
	fmt.Print(line)
	os.Exit(0)
}

// DialAs connects from inside netns as uid to addr and returns the reply
// ("<listener name> <original destination>").
func DialAs(t testing.TB, n ns.NetNS, uid uint32, addr string) (string, error) {
	t.Helper()
	bin, err := worldExecutable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = []string{helperEnv + "=" + addr}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	var out []byte
	err = n.Do(func(ns.NetNS) error {
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	if err != nil {
		return "", fmt.Errorf("dial %s as uid %d: %w: %s", addr, uid, err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// StartAs runs the test binary inside netns as uid with env (the
// subprocess's TestMain reads it and does the job) until the test ends,
// when it gets SIGTERM by its PID; its output is logged if the test failed.
func StartAs(t testing.TB, n ns.NetNS, uid uint32, env ...string) {
	t.Helper()
	bin, err := worldExecutable()
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.CreateTemp(t.TempDir(), "proc-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}, Setsid: true}
	if err := n.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		t.Fatalf("start %v in %s: %v", env, Name(n), err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(out.Name())
			t.Logf("output of %v in %s:\n%s", env, Name(n), b)
		}
	})
}

var (
	copyOnce sync.Once
	copyPath string
	copyErr  error
)

// worldExecutable is a copy of the test binary that any UID may run (go
// test keeps its binary in a root-only directory).
func worldExecutable() (string, error) {
	copyOnce.Do(func() {
		dir, err := os.MkdirTemp("", "netnstest-")
		if err != nil {
			copyErr = err
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			copyErr = err
			return
		}
		b, err := os.ReadFile(os.Args[0])
		if err != nil {
			copyErr = err
			return
		}
		copyPath = filepath.Join(dir, "dialer")
		copyErr = os.WriteFile(copyPath, b, 0o755)
	})
	return copyPath, copyErr
}

// Cleanup removes the dialer copy; call it at the end of TestMain.
func Cleanup() {
	if copyPath != "" {
		os.RemoveAll(filepath.Dir(copyPath))
	}
}

// HostPort joins an address and a port.
func HostPort(a netip.Addr, port int) string { return net.JoinHostPort(a.String(), strconv.Itoa(port)) }
