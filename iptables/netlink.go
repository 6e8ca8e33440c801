package iptables

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// The nf_tables fast path. An exec of iptables-restore costs several ms,
// most of an ADD; here the same rules go into the kernel in one netlink
// transaction, encoded expression for expression the way iptables-nft
// encodes them (payload loads, compat owner match and REDIRECT target), so
// that iptables-save shows them, Verify compares them, and iptables-nft
// removes them. Anything it does not encode (DNAT for Consul DNS) and any
// netns that already holds meshlet chains takes the iptables-restore path.

func tableFamily(f Family) nftables.TableFamily {
	if f == IPv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

// netlinkCapable reports whether every rule is one the encoder handles.
func (rs Ruleset) netlinkCapable() bool {
	return !slices.ContainsFunc(rs.rules, func(r Rule) bool { return r.Target == "DNAT" })
}

// applyNetlink installs rs in one transaction. handled is false when the
// netns already has meshlet chains (a repeated ADD): the caller replaces
// them through iptables-restore.
func applyNetlink(netns string, rs Ruleset) (handled bool, err error) {
	f, err := os.Open(netns)
	if err != nil {
		return false, fmt.Errorf("open netns %s: %w", netns, err)
	}
	defer f.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return false, fmt.Errorf("netlink in %s: %w", netns, err)
	}
	fam := tableFamily(rs.Family)
	existing, err := conn.ListChainsOfTableFamily(fam)
	if err != nil {
		return false, fmt.Errorf("list %s chains in %s: %w", rs.Family, netns, err)
	}
	have := map[string]bool{}
	for _, c := range existing {
		if c.Table.Name == "nat" {
			have[c.Name] = true
		}
	}
	for _, c := range OwnedChains {
		if have[c] {
			return false, nil
		}
	}
	table := conn.AddTable(&nftables.Table{Family: fam, Name: "nat"})
	chains := map[string]*nftables.Chain{}
	accept := nftables.ChainPolicyAccept
	for _, base := range []struct {
		name string
		hook *nftables.ChainHook
	}{{"PREROUTING", nftables.ChainHookPrerouting}, {"OUTPUT", nftables.ChainHookOutput}} {
		c := &nftables.Chain{Name: base.name, Table: table}
		if !have[base.name] {
			c.Type, c.Hooknum, c.Priority, c.Policy = nftables.ChainTypeNAT, base.hook, nftables.ChainPriorityNATDest, &accept
			conn.AddChain(c)
		}
		chains[base.name] = c
	}
	for _, name := range rs.Chains {
		chains[name] = conn.AddChain(&nftables.Chain{Name: name, Table: table})
	}
	for _, r := range rs.rules {
		exprs, err := r.exprs(rs.Family)
		if err != nil {
			return false, err
		}
		conn.AddRule(&nftables.Rule{Table: table, Chain: chains[r.Chain], Exprs: exprs})
	}
	if err := conn.Flush(); err != nil {
		return false, fmt.Errorf("nf_tables transaction in %s: %w", netns, err)
	}
	return true, nil
}

// exprs encodes a rule as iptables-nft 1.8 does.
func (r Rule) exprs(f Family) ([]expr.Any, error) {
	var e []expr.Any
	load := func(base expr.PayloadBase, off, n uint32) {
		e = append(e, &expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n})
	}
	eq := func(data []byte) { e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data}) }
	if r.Proto != "" {
		proto := map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP}[r.Proto]
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1})
		eq([]byte{proto})
	}
	if r.Dst.IsValid() && r.Dst.Bits() > 0 {
		off := uint32(16) // daddr in the IPv4 header
		if f == IPv6 {
			off = 24
		}
		bits := r.Dst.Bits()
		n := uint32((bits + 7) / 8)
		addr := r.Dst.Addr().AsSlice()[:n]
		load(expr.PayloadBaseNetworkHeader, off, n)
		if bits%8 != 0 {
			mask := make([]byte, n)
			for i := range mask {
				mask[i] = 0xff
			}
			mask[n-1] = byte(0xff << (8 - bits%8))
			e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)})
		}
		eq(addr)
	}
	if r.OutIface != "" {
		e = append(e, &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1})
		eq(append([]byte(r.OutIface), 0))
	}
	if r.DPort != nil {
		load(expr.PayloadBaseTransportHeader, 2, 2)
		lo, hi := be16(r.DPort.From), be16(r.DPort.To)
		if r.DPort.From == r.DPort.To {
			eq(lo)
		} else {
			e = append(e, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: lo, ToData: hi})
		}
	}
	if r.UID != nil {
		// struct xt_owner_match_info: uid_min, uid_max, gid_min, gid_max,
		// match (XT_OWNER_UID), invert; XT_ALIGNed to 24 bytes.
		info := make(xt.Unknown, 24)
		binary.NativeEndian.PutUint32(info[0:], r.UID.From)
		binary.NativeEndian.PutUint32(info[4:], r.UID.To)
		info[16] = 1
		e = append(e, &expr.Match{Name: "owner", Rev: 1, Info: &info})
	}
	e = append(e, &expr.Counter{})
	switch r.Target {
	case "RETURN":
		e = append(e, &expr.Verdict{Kind: expr.VerdictReturn})
	case "REDIRECT":
		e = append(e, &expr.Target{Name: "REDIRECT", Rev: 0, Info: redirectInfo(f, r.ToPort)})
	case "DNAT":
		return nil, fmt.Errorf("rule %q: DNAT is applied with iptables-restore", r)
	default:
		e = append(e, &expr.Verdict{Kind: expr.VerdictJump, Chain: r.Target})
	}
	return e, nil
}

// redirectInfo is REDIRECT revision 0's payload: for IPv4 struct
// nf_nat_ipv4_multi_range_compat (rangesize 1, one range), for IPv6 struct
// nf_nat_range; flags NF_NAT_RANGE_PROTO_SPECIFIED, ports big-endian.
func redirectInfo(f Family, port uint16) *xt.Unknown {
	const protoSpecified = 2
	var info xt.Unknown
	if f == IPv4 {
		info = make(xt.Unknown, 24)
		binary.NativeEndian.PutUint32(info[0:], 1)
		binary.NativeEndian.PutUint32(info[4:], protoSpecified)
		copy(info[16:], be16(port))
		copy(info[18:], be16(port))
	} else {
		info = make(xt.Unknown, 40)
		binary.NativeEndian.PutUint32(info[0:], protoSpecified)
		copy(info[36:], be16(port))
		copy(info[38:], be16(port))
	}
	return &info
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
