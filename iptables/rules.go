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
// owns and every rule, in iptables-save's canonical spelling (so live rules
// compare textually). Jumps from the built-in chains come last.
type Ruleset struct {
	Family Family
	Chains []string
	Rules  []string
}

// Rules renders the plan for one family.
func (p *Plan) Rules(f Family) Ruleset {
	rs := Ruleset{Family: f, Chains: []string{ChainInbound, ChainInboundRedirect, ChainOutput, ChainRedirect}}
	add := func(chain string, spec ...string) {
		rs.Rules = append(rs.Rules, "-A "+chain+" "+strings.Join(spec, " "))
	}
	loopback, cidrs := "127.0.0.0/8", p.ExcludeCIDRs4
	if f == IPv6 {
		loopback, cidrs = "::1/128", p.ExcludeCIDRs6
	}

	// Inbound: everything to the proxy's inbound listener but excluded ports.
	for _, r := range p.ExcludeInboundPorts {
		add(ChainInbound, "-p tcp -m tcp --dport", r.String(), "-j RETURN")
	}
	add(ChainInbound, "-p tcp -j", ChainInboundRedirect)
	add(ChainInboundRedirect, "-p tcp -j REDIRECT --to-ports", fmt.Sprint(p.InboundPort))

	// Outbound: the proxy's own traffic, excluded UIDs, loopback (the whole
	// range, and anything leaving through lo, such as the pod's own IP),
	// excluded ports and CIDRs leave untouched; the rest goes to the proxy.
	add(ChainOutput, "-m owner --uid-owner", fmt.Sprint(p.ProxyUID), "-j RETURN")
	for _, r := range p.ExcludeUIDs {
		add(ChainOutput, "-m owner --uid-owner", r.String(), "-j RETURN")
	}
	add(ChainOutput, "-d", loopback, "-j RETURN")
	add(ChainOutput, "-o lo -j RETURN")
	for _, r := range p.ExcludeOutboundPorts {
		add(ChainOutput, "-p tcp -m tcp --dport", r.String(), "-j RETURN")
	}
	for _, c := range cidrs {
		add(ChainOutput, "-d", c.String(), "-j RETURN")
	}
	add(ChainOutput, "-j", ChainRedirect)
	add(ChainRedirect, "-p tcp -j REDIRECT --to-ports", fmt.Sprint(p.OutboundPort))

	dns := p.DNS.IsValid() && p.DNS.Addr().Is4() == (f == IPv4)
	if dns {
		rs.Chains = append(rs.Chains, ChainDNS)
		dst := hostPrefix(p.DNS.Addr())
		to := p.DNS.String()
		for _, proto := range []string{"udp", "tcp"} {
			add(ChainDNS, "-d", dst, "-p", proto, "-m", proto, "--dport 53 -j DNAT --to-destination", to)
		}
	}
	add("PREROUTING", "-p tcp -j", ChainInbound)
	if dns {
		// Before the TCP redirect, so DNS over TCP reaches Consul DNS too.
		add("OUTPUT", "-p udp -m udp --dport 53 -j", ChainDNS)
		add("OUTPUT", "-p tcp -m tcp --dport 53 -j", ChainDNS)
	}
	add("OUTPUT", "-p tcp -j", ChainOutput)
	return rs
}

func hostPrefix(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// builtinJumps are the rules of rs that live in built-in chains.
func (rs Ruleset) builtinJumps() []string {
	var out []string
	for _, r := range rs.Rules {
		if strings.HasPrefix(r, "-A PREROUTING ") || strings.HasPrefix(r, "-A OUTPUT ") {
			out = append(out, r)
		}
	}
	return out
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
