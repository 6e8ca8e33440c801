// Package originaldst reads where a TCP connection was headed before the
// pod's NAT rules (REDIRECT, DNAT) changed its destination: conntrack
// keeps it, and getsockopt(SO_ORIGINAL_DST) reads it back. The proxy's
// transparent listener needs it; so do the netns tests of the rules.
package originaldst

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from
// <linux/netfilter_ipv6/ip6_tables.h>, which golang.org/x/sys/unix does
// not define (it has only the IPv4 SO_ORIGINAL_DST; both are 80).
const ip6tSOOriginalDst = 80

// Get is c's original destination.
func Get(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", c.RemoteAddr(), err)
	}
	var res netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		var buf [28]byte // a sockaddr_in6, the larger of the two
		size := uint32(len(buf))
		// The family of the connection, not of the socket: an IPv4
		// connection on a dual-stack listener is tracked as IPv4.
		level, opt := unix.SOL_IP, unix.SO_ORIGINAL_DST
		if la, ok := c.LocalAddr().(*net.TCPAddr); ok && la.IP.To4() == nil {
			level, opt = unix.SOL_IPV6, ip6tSOOriginalDst
		}
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt),
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if e != 0 {
			serr = e
			return
		}
		port := uint16(buf[2])<<8 | uint16(buf[3]) // network order
		switch *(*uint16)(unsafe.Pointer(&buf[0])) {
		case unix.AF_INET:
			res = netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[4:8])), port)
		case unix.AF_INET6:
			res = netip.AddrPortFrom(netip.AddrFrom16([16]byte(buf[8:24])), port)
		default:
			serr = errors.New("unknown address family")
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", c.RemoteAddr(), err)
	}
	return res, nil
}
