package cluster

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procSocket is one line of /proc/net/{tcp,udp}{,6}: the sockets of this
// network namespace, named by inode so they can be matched to the fds of
// processes.
type procSocket struct {
	proto string
	addr  netip.Addr // local address, IPv4-mapped addresses unmapped
	port  int
	state int // TCP state (0x0A LISTEN); for UDP 0x07 means unconnected
	inode string
}

// bound: the socket holds its port on its own (a listener or an
// unconnected datagram socket), not as one end of a connection.
func (s procSocket) bound() bool {
	if s.proto == "tcp" {
		return s.state == 0x0A
	}
	return s.state == 0x07
}

// procSockets lists the IPv4 and IPv6 sockets of proto ("tcp" or "udp").
func procSockets(proto string) ([]procSocket, error) {
	var out []procSocket
	for _, f := range []string{proto, proto + "6"} {
		socks, err := parseProcNet(proto, "/proc/net/"+f)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return nil, err
		}
		out = append(out, socks...)
	}
	return out, nil
}

func parseProcNet(proto, path string) ([]procSocket, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []procSocket
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fl := strings.Fields(sc.Text())
		if len(fl) < 10 {
			continue
		}
		host, port, ok := strings.Cut(fl[1], ":")
		addr, err := parseProcAddr(host)
		p, err2 := strconv.ParseUint(port, 16, 16)
		st, err3 := strconv.ParseUint(fl[3], 16, 8)
		if !ok || err != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("%s: unexpected line %q", path, sc.Text())
		}
		out = append(out, procSocket{proto: proto, addr: addr, port: int(p), state: int(st), inode: fl[9]})
	}
	return out, sc.Err()
}

// parseProcAddr decodes the kernel's hex address: each 32-bit word of the
// network-order address printed as a host-order integer.
func parseProcAddr(h string) (netip.Addr, error) {
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.Addr{}, fmt.Errorf("bad address %q", h)
	}
	for i := 0; i < len(b); i += 4 {
		binary.NativeEndian.PutUint32(b[i:], binary.BigEndian.Uint32(b[i:]))
	}
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap(), nil
}

type sockOwner struct {
	pid int
	exe string
}

// socketOwners finds the processes with an fd on one of the socket inodes
// by walking /proc/*/fd; processes that vanish meanwhile are skipped.
func socketOwners(inodes map[string]bool) []sockOwner {
	if len(inodes) == 0 {
		return nil
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []sockOwner
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		for ino := range socketInodes(pid) {
			if inodes[ino] {
				exe, _ := os.Readlink(d + "/exe")
				out = append(out, sockOwner{pid: pid, exe: exe})
				break
			}
		}
	}
	return out
}

// socketInodes returns the inodes of the sockets pid has open.
func socketInodes(pid int) map[string]bool {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	out := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			out[strings.TrimSuffix(ino, "]")] = true
		}
	}
	return out
}
