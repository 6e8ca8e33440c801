package iptables

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// The nf_tables fast path. An exec of iptables-restore costs several ms,
// most of an ADD or DEL; here the same change goes into the kernel in one
// netlink transaction for all families, encoded expression for expression
// the way iptables-nft 1.8 encodes it (payload loads, compat owner and
// comment matches, REDIRECT and DNAT targets), so that iptables-save shows
// the rules, Verify compares them, and iptables-nft can remove them.

// netlinkSync makes meshlet's part of each family's nat table equal to its
// ruleset, in one transaction: jumps into meshlet chains are deleted,
// chains still wanted are flushed, the others deleted, and the rules
// added. An empty ruleset (no chains, no rules) removes meshlet's state.
// When the transaction fails the kernel has applied none of it.
func netlinkSync(netns string, sets []Ruleset) error {
	conn, done, err := netlinkIn(netns)
	if err != nil {
		return err
	}
	defer done()
	changed := false
	for _, rs := range sets {
		c, err := queueSync(conn, rs)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", rs.Family, netns, err)
		}
		changed = changed || c
	}
	if !changed {
		return nil
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nf_tables transaction in %s: %w", netns, err)
	}
	return nil
}

// netlinkIn is one nf_tables socket in the netns for a whole operation:
// without AsLasting the library dials anew, entering the netns on a fresh
// thread, per request.
func netlinkIn(netns string) (conn *nftables.Conn, done func(), err error) {
	f, err := os.Open(netns)
	if err != nil {
		return nil, nil, fmt.Errorf("open netns %s: %w", netns, err)
	}
	defer f.Close() // the socket keeps the netns once made
	conn, err = nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting())
	if err != nil {
		return nil, nil, fmt.Errorf("netlink in %s: %w", netns, err)
	}
	return conn, func() { _ = conn.CloseLasting() }, nil
}

// queueSync queues one family's changes on conn; changed is false when
// there is nothing to do (a DEL of a pod that has no rules).
func queueSync(conn *nftables.Conn, rs Ruleset) (changed bool, err error) {
	fam := tableFamily(rs.Family)
	existing, err := conn.ListChainsOfTableFamily(fam)
	if err != nil {
		return false, fmt.Errorf("list chains: %w", err)
	}
	table := &nftables.Table{Family: fam, Name: "nat"}
	have := map[string]*nftables.Chain{}
	anyOwned := false
	for _, c := range existing {
		if c.Table.Name == "nat" {
			have[c.Name] = c
			anyOwned = anyOwned || owned(c.Name)
		}
	}
	if !anyOwned && len(rs.Rules) == 0 {
		return false, nil
	}
	if anyOwned {
		// Jumps first: a chain that is still jumped to cannot be deleted.
		for _, base := range []string{"PREROUTING", "OUTPUT"} {
			if have[base] == nil {
				continue
			}
			rules, err := conn.GetRules(table, have[base])
			if err != nil {
				return false, fmt.Errorf("read %s: %w", base, err)
			}
			for _, r := range rules {
				if jumpsToOwned(r) {
					if err := conn.DelRule(r); err != nil {
						return false, fmt.Errorf("delete jump in %s: %w", base, err)
					}
				}
			}
		}
	}
	want := map[string]bool{}
	for _, c := range rs.Chains {
		want[c] = true
	}
	for _, name := range OwnedChains {
		if c := have[name]; c != nil {
			conn.FlushChain(c)
			if !want[name] {
				conn.DelChain(c)
			}
		}
	}
	if len(rs.Rules) == 0 {
		return true, nil
	}
	conn.AddTable(table)
	accept := nftables.ChainPolicyAccept
	for _, base := range []struct {
		name string
		hook *nftables.ChainHook
	}{{"PREROUTING", nftables.ChainHookPrerouting}, {"OUTPUT", nftables.ChainHookOutput}} {
		if have[base.name] == nil {
			conn.AddChain(&nftables.Chain{Name: base.name, Table: table, Type: nftables.ChainTypeNAT,
				Hooknum: base.hook, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
		}
	}
	for _, name := range rs.Chains {
		if have[name] == nil {
			conn.AddChain(&nftables.Chain{Name: name, Table: table})
		}
	}
	for _, r := range rs.Rules {
		exprs, err := r.exprs(rs.Family)
		if err != nil {
			return false, err
		}
		conn.AddRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Name: r.Chain, Table: table}, Exprs: exprs})
	}
	return true, nil
}

func jumpsToOwned(r *nftables.Rule) bool {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) && owned(v.Chain) {
			return true
		}
	}
	return false
}

func tableFamily(f Family) nftables.TableFamily {
	if f == IPv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

// exprs encodes a rule as iptables-nft 1.8 does; TestNetlinkEncodesLikeIptablesNFT
// compares the two expression by expression.
func (r Rule) exprs(f Family) ([]expr.Any, error) {
	var e []expr.Any
	load := func(base expr.PayloadBase, off, n uint32) {
		e = append(e, &expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n})
	}
	eq := func(data []byte) { e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data}) }
	switch r.Proto {
	case AnyProtocol:
		if r.DPort != nil {
			return nil, fmt.Errorf("rule %q: a port match needs tcp or udp", r)
		}
	case TCP, UDP:
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1})
		eq([]byte{byte(r.Proto)})
	default:
		return nil, fmt.Errorf("rule %q: protocol %d is not tcp or udp", r, uint8(r.Proto))
	}
	if r.Dst.IsValid() && r.Dst.Bits() > 0 {
		off := uint32(16) // daddr in the IPv4 header
		if f == IPv6 {
			off = 24
		}
		// A byte-aligned prefix compares only its bytes; any other loads
		// the whole address and masks it, as iptables-nft does.
		bits, addr := r.Dst.Bits(), r.Dst.Addr().AsSlice()
		n := uint32(bits / 8)
		if bits%8 != 0 {
			n = uint32(len(addr))
		}
		load(expr.PayloadBaseNetworkHeader, off, n)
		if bits%8 != 0 {
			mask := net.CIDRMask(bits, len(addr)*8)
			e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)})
		}
		eq(addr[:n])
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
		// match (XT_OWNER_UID), invert; XT_ALIGNed to 24 bytes. The
		// library has no type for it.
		info := make(xt.Unknown, 24)
		binary.NativeEndian.PutUint32(info[0:], r.UID.From)
		binary.NativeEndian.PutUint32(info[4:], r.UID.To)
		info[16] = 1
		e = append(e, &expr.Match{Name: "owner", Rev: 1, Info: &info})
	}
	if r.Comment != "" {
		c := xt.Comment(r.Comment)
		e = append(e, &expr.Match{Name: "comment", Rev: 0, Info: &c})
	}
	e = append(e, &expr.Counter{})
	switch r.Target {
	case "RETURN":
		e = append(e, &expr.Verdict{Kind: expr.VerdictReturn})
	case "REDIRECT":
		e = append(e, &expr.Target{Name: "REDIRECT", Rev: 0, Info: redirectInfo(f, r.ToPort)})
	case "DNAT":
		// Revision 2 (struct nf_nat_range2) in both families, as iptables
		// picks the newest revision the kernel has.
		ip := net.IP(r.ToAddr.Addr().AsSlice())
		port := r.ToAddr.Port()
		e = append(e, &expr.Target{Name: "DNAT", Rev: 2, Info: &xt.NatRange2{NatRange: xt.NatRange{
			Flags: uint(xt.NatRangeMapIPs | xt.NatRangeProtoSpecified),
			MinIP: ip, MaxIP: ip, MinPort: port, MaxPort: port,
		}}})
	default:
		if !owned(r.Target) {
			return nil, fmt.Errorf("rule %q: target %q is not encoded", r, r.Target)
		}
		e = append(e, &expr.Verdict{Kind: expr.VerdictJump, Chain: r.Target})
	}
	return e, nil
}

// redirectInfo is REDIRECT revision 0's payload: for IPv4 struct
// nf_nat_ipv4_multi_range_compat with one range, for IPv6 struct
// nf_nat_range; only the port is given.
func redirectInfo(f Family, port uint16) xt.InfoAny {
	flags := uint(xt.NatRangeProtoSpecified)
	if f == IPv4 {
		return &xt.NatIPv4MultiRangeCompat{{Flags: flags, MinPort: port, MaxPort: port}}
	}
	return &xt.NatRange{Flags: flags, MinPort: port, MaxPort: port}
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
