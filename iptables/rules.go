package iptables

import (
	"fmt"
	"net/netip"
	"strings"
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

// Ruleset is the nat-table state one family must have: the chains meshlet
// owns and every rule. Jumps from the built-in chains come last.
type Ruleset struct {
	Family Family
	Chains []string
	Rules  []string // each rule in iptables-save's canonical spelling
	rules  []Rule
}

// Rule is one nat rule. Its String is exactly what iptables-save prints for
// it, so live rules compare textually; the netlink backend encodes the same
// fields the way iptables-nft does.
type Rule struct {
	Chain    string
	Dst      netip.Prefix // zero: any destination
	OutIface string
	Proto    string // "", "tcp" or "udp"
	DPort    *PortRange
	UID      *IDRange
	Target   string         // a chain, RETURN, REDIRECT or DNAT
	ToPort   uint16         // REDIRECT
	ToAddr   netip.AddrPort // DNAT
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
	if r.Proto != "" {
		b.WriteString(" -p " + r.Proto)
	}
	if r.DPort != nil {
		fmt.Fprintf(&b, " -m %s --dport %s", r.Proto, r.DPort)
	}
	if r.UID != nil {
		b.WriteString(" -m owner --uid-owner " + r.UID.String())
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
	add := func(r Rule) { rs.rules = append(rs.rules, r) }
	loopback, cidrs := netip.MustParsePrefix("127.0.0.0/8"), p.ExcludeCIDRs4
	if f == IPv6 {
		loopback, cidrs = netip.MustParsePrefix("::1/128"), p.ExcludeCIDRs6
	}
	ret := func(r Rule) Rule { r.Chain, r.Target = ChainOutput, "RETURN"; return r }

	// Inbound: everything to the proxy's inbound listener but excluded ports.
	for _, r := range p.ExcludeInboundPorts {
		add(Rule{Chain: ChainInbound, Proto: "tcp", DPort: &r, Target: "RETURN"})
	}
	add(Rule{Chain: ChainInbound, Proto: "tcp", Target: ChainInboundRedirect})
	add(Rule{Chain: ChainInboundRedirect, Proto: "tcp", Target: "REDIRECT", ToPort: p.InboundPort})

	// Outbound: the proxy's own traffic, excluded UIDs, loopback (the whole
	// range, and anything leaving through lo, such as the pod's own IP),
	// excluded ports and CIDRs leave untouched; the rest goes to the proxy.
	add(ret(Rule{UID: &IDRange{p.ProxyUID, p.ProxyUID}}))
	for _, r := range p.ExcludeUIDs {
		add(ret(Rule{UID: &r}))
	}
	add(ret(Rule{Dst: loopback}))
	add(ret(Rule{OutIface: "lo"}))
	for _, r := range p.ExcludeOutboundPorts {
		add(ret(Rule{Proto: "tcp", DPort: &r}))
	}
	for _, c := range cidrs {
		add(ret(Rule{Dst: c}))
	}
	add(Rule{Chain: ChainOutput, Target: ChainRedirect})
	add(Rule{Chain: ChainRedirect, Proto: "tcp", Target: "REDIRECT", ToPort: p.OutboundPort})

	dns := p.DNS.IsValid() && p.DNS.Addr().Is4() == (f == IPv4)
	port53 := &PortRange{53, 53}
	if dns {
		rs.Chains = append(rs.Chains, ChainDNS)
		dst := netip.PrefixFrom(p.DNS.Addr(), p.DNS.Addr().BitLen())
		for _, proto := range []string{"udp", "tcp"} {
			add(Rule{Chain: ChainDNS, Dst: dst, Proto: proto, DPort: port53, Target: "DNAT", ToAddr: p.DNS})
		}
	}
	add(Rule{Chain: "PREROUTING", Proto: "tcp", Target: ChainInbound})
	if dns {
		// Before the TCP redirect, so DNS over TCP reaches Consul DNS too.
		add(Rule{Chain: "OUTPUT", Proto: "udp", DPort: port53, Target: ChainDNS})
		add(Rule{Chain: "OUTPUT", Proto: "tcp", DPort: port53, Target: ChainDNS})
	}
	add(Rule{Chain: "OUTPUT", Proto: "tcp", Target: ChainOutput})
	for _, r := range rs.rules {
		rs.Rules = append(rs.Rules, r.String())
	}
	return rs
}

// restoreInput is iptables-restore --noflush input that creates the ruleset
// in a netns that has none of it: "-N" fails when a chain exists, so a
// second apply falls back to replaceInput instead of doubling the jumps.
func (rs Ruleset) restoreInput() string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, c := range rs.Chains {
		b.WriteString("-N " + c + "\n")
	}
	for _, r := range rs.Rules {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// replaceInput removes the live meshlet state (jumps and chains, as found
// in iptables-save) and installs rs, in one transaction.
func (rs Ruleset) replaceInput(live liveState) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, j := range live.jumps {
		b.WriteString("-D " + strings.TrimPrefix(j, "-A ") + "\n")
	}
	want := map[string]bool{}
	for _, c := range rs.Chains {
		want[c] = true
		// Declaring an existing chain under --noflush flushes it.
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, c := range live.chains {
		if !want[c] {
			b.WriteString(":" + c + " - [0:0]\n-X " + c + "\n")
		}
	}
	for _, r := range rs.Rules {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// removeInput deletes the live meshlet state.
func removeInput(live liveState) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, j := range live.jumps {
		b.WriteString("-D " + strings.TrimPrefix(j, "-A ") + "\n")
	}
	for _, c := range live.chains {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, c := range live.chains {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// liveState is meshlet's part of a nat table as iptables-save shows it.
type liveState struct {
	chains []string // owned chains that exist
	jumps  []string // rules in built-in chains that jump to an owned chain
	rules  []string // every rule in an owned chain, and the jumps
}

func (l liveState) empty() bool { return len(l.chains) == 0 && len(l.jumps) == 0 }

// parseSave extracts meshlet's state from iptables-save -t nat output.
func parseSave(out string) liveState {
	var l liveState
	owned := map[string]bool{}
	for _, c := range OwnedChains {
		owned[c] = true
	}
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			if name, _, _ := strings.Cut(line[1:], " "); owned[name] {
				l.chains = append(l.chains, name)
			}
		case strings.HasPrefix(line, "-A "):
			f := strings.Fields(line)
			if owned[f[1]] {
				l.rules = append(l.rules, line)
				continue
			}
			for i := 2; i+1 < len(f); i++ {
				if (f[i] == "-j" || f[i] == "-g") && owned[f[i+1]] {
					l.jumps = append(l.jumps, line)
					l.rules = append(l.rules, line)
					break
				}
			}
		}
	}
	return l
}
