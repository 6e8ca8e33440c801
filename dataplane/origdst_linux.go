package dataplane

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/
// ip6_tables.h), the same number as SO_ORIGINAL_DST on SOL_IPV6.
const ip6tSOOriginalDst = 80

// originalDst is where a connection redirected by the pod's NAT rules
// (REDIRECT to the outbound listener) was going: conntrack keeps it, and
// getsockopt(SO_ORIGINAL_DST) reads it back.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	var dst netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if local.Addr().Is4() || local.Addr().Is4In6() {
			// sockaddr_in fits the 16 bytes of an ipv6_mreq's address.
			m, e := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
			if e != nil {
				serr = e
				return
			}
			a := m.Multiaddr
			dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte{a[4], a[5], a[6], a[7]}), binary.BigEndian.Uint16(a[2:4]))
			return
		}
		// sockaddr_in6 fits an ip6_mtuinfo's address.
		m, e := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, ip6tSOOriginalDst)
		if e != nil {
			serr = e
			return
		}
		// The kernel wrote the port in network order into a uint16.
		var p [2]byte
		binary.NativeEndian.PutUint16(p[:], m.Addr.Port)
		dst = netip.AddrPortFrom(netip.AddrFrom16(m.Addr.Addr), binary.BigEndian.Uint16(p[:]))
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", c.RemoteAddr(), err)
	}
	return dst, nil
}
