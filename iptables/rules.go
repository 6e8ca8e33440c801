package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Family is an IP family: the rules of each live in its own nat table.
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string { return fmt.Sprintf("IPv%d", int(f)) }

// The chains keep consul's names, so operators' scripts and runbooks that
// look for CONSUL_PROXY_* keep working on meshlet pods.
const (
	ChainInbound         = "CONSUL_PROXY_INBOUND"
	ChainInboundRedirect = "CONSUL_PROXY_IN_REDIRECT"
	ChainOutput          = "CONSUL_PROXY_OUTPUT"
	ChainRedirect        = "CONSUL_PROXY_REDIRECT"
	ChainDNS             = "CONSUL_DNS_REDIRECT"
)

// OwnedChains are every chain meshlet may create, in creation order.
var OwnedChains = []string{ChainInbound, ChainInboundRedirect, ChainOutput, ChainRedirect, ChainDNS}

func owned(chain string) bool { return slices.Contains(OwnedChains, chain) }

// Protocol is a rule's L4 protocol. Only the values below exist, so no
// encoder can meet a protocol it does not know.
type Protocol uint8

const (
	AnyProtocol Protocol = 0
	TCP         Protocol = unix.IPPROTO_TCP
	UDP         Protocol = unix.IPPROTO_UDP
)

func (p Protocol) String() string {
	switch p {
	case AnyProtocol:
		return ""
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// Ruleset is the nat-table state one family must have: the chains meshlet
// owns and every rule. Jumps from the built-in chains come last.
type Ruleset struct {
	Family Family
	Chains []string
	Rules  []Rule
}

// Lines are the rules in iptables-save's spelling.
func (rs Ruleset) Lines() []string {
	out := make([]string, len(rs.Rules))
	for i, r := range rs.Rules {
		out[i] = r.String()
	}
	return out
}

// Rule is one nat rule. Its String is exactly what iptables-save prints for
// it, so live rules compare textually; the netlink backend encodes the same
// fields the way iptables-nft does.
type Rule struct {
	Chain    string
	Dst      netip.Prefix // zero: any destination
	OutIface string
	Proto    Protocol
	DPort    *PortRange // needs Proto TCP or UDP
	UID      *IDRange
	// Comment says what the rule is for ("meshlet/<purpose>"), so that an
	// operator reading iptables-save in a pod need not know the code.
	Comment string
	Target  string         // a chain, RETURN, REDIRECT or DNAT
	ToPort  uint16         // REDIRECT
	ToAddr  netip.AddrPort // DNAT
}

func (r Rule) String() string {
	var b strings.Builder
	b.WriteString("-A " + r.Chain)
	if r.Dst.IsValid() && r.Dst.Bits() > 0 {
		b.WriteString(" -d " + r.Dst.String())
	}
	if r.OutIface != "" {
		b.WriteString(" -o " + r.OutIface)
	}
	if r.Proto != AnyProtocol {
		b.WriteString(" -p " + r.Proto.String())
	}
	if r.DPort != nil {
		fmt.Fprintf(&b, " -m %s --dport %s", r.Proto, r.DPort)
	}
	if r.UID != nil {
		b.WriteString(" -m owner --uid-owner " + r.UID.String())
	}
	if r.Comment != "" {
		fmt.Fprintf(&b, " -m comment --comment %q", r.Comment)
	}
	b.WriteString(" -j " + r.Target)
	switch r.Target {
	case "REDIRECT":
		fmt.Fprintf(&b, " --to-ports %d", r.ToPort)
	case "DNAT":
		b.WriteString(" --to-destination " + r.ToAddr.String())
	}
	return b.String()
}

// Rules renders the plan for one family.
func (p *Plan) Rules(f Family) Ruleset {
	rs := Ruleset{Family: f, Chains: []string{ChainInbound, ChainInboundRedirect, ChainOutput, ChainRedirect}}
	add := func(purpose string, r Rule) {
		r.Comment = "meshlet/" + purpose
		rs.Rules = append(rs.Rules, r)
	}
	loopback, cidrs := netip.MustParsePrefix("127.0.0.0/8"), p.ExcludeCIDRs4
	if f == IPv6 {
		loopback, cidrs = netip.MustParsePrefix("::1/128"), p.ExcludeCIDRs6
	}
	ret := func(r Rule) Rule { r.Chain, r.Target = ChainOutput, "RETURN"; return r }

	// Inbound: everything to the proxy's inbound listener but excluded ports.
	for _, r := range p.ExcludeInboundPorts {
		add("exclude-inbound-port", Rule{Chain: ChainInbound, Proto: TCP, DPort: &r, Target: "RETURN"})
	}
	add("inbound", Rule{Chain: ChainInbound, Proto: TCP, Target: ChainInboundRedirect})
	add("to-inbound-listener", Rule{Chain: ChainInboundRedirect, Proto: TCP, Target: "REDIRECT", ToPort: p.InboundPort})

	// Outbound: the proxy's own traffic, excluded UIDs, loopback (the whole
	// range, and anything leaving through lo, such as the pod's own IP),
	// excluded ports and CIDRs leave untouched; the rest goes to the proxy.
	add("proxy-uid", ret(Rule{UID: &IDRange{p.ProxyUID, p.ProxyUID}}))
	for _, r := range p.ExcludeUIDs {
		add("exclude-uid", ret(Rule{UID: &r}))
	}
	add("loopback", ret(Rule{Dst: loopback}))
	add("via-lo", ret(Rule{OutIface: "lo"}))
	for _, r := range p.ExcludeOutboundPorts {
		add("exclude-outbound-port", ret(Rule{Proto: TCP, DPort: &r}))
	}
	for _, c := range cidrs {
		add("exclude-outbound-cidr", ret(Rule{Dst: c}))
	}
	add("outbound", Rule{Chain: ChainOutput, Target: ChainRedirect})
	add("to-outbound-listener", Rule{Chain: ChainRedirect, Proto: TCP, Target: "REDIRECT", ToPort: p.OutboundPort})

	dns := p.DNS.IsValid() && p.DNS.Addr().Is4() == (f == IPv4)
	port53 := &PortRange{53, 53}
	if dns {
		rs.Chains = append(rs.Chains, ChainDNS)
		var dst netip.Prefix // zero: every nameserver
		if !p.DNSEvery {
			dst = netip.PrefixFrom(p.DNS.Addr(), p.DNS.Addr().BitLen())
		}
		for _, proto := range []Protocol{UDP, TCP} {
			add("to-consul-dns", Rule{Chain: ChainDNS, Dst: dst, Proto: proto, DPort: port53, Target: "DNAT", ToAddr: p.DNS})
		}
	}
	add("inbound-hook", Rule{Chain: "PREROUTING", Proto: TCP, Target: ChainInbound})
	if dns {
		// Before the TCP redirect, so DNS over TCP reaches Consul DNS too.
		add("dns-hook", Rule{Chain: "OUTPUT", Proto: UDP, DPort: port53, Target: ChainDNS})
		add("dns-hook", Rule{Chain: "OUTPUT", Proto: TCP, DPort: port53, Target: ChainDNS})
	}
	add("outbound-hook", Rule{Chain: "OUTPUT", Proto: TCP, Target: ChainOutput})
	return rs
}
