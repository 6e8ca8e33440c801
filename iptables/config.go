// Package iptables is the one place that turns a redirect config into
// transparent-proxy rules, applies them atomically inside a pod's network
// namespace, verifies them and removes them.
package iptables

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Config is the redirect config: the contract between the webhook (which
// writes it), the CNI plugin (which applies it) and the node agent. Its JSON
// keys are consul-k8s' (Go field names), values as consul-k8s writes them.
type Config struct {
	ProxyUserID          string   `json:"ProxyUserID"`
	ProxyInboundPort     int      `json:"ProxyInboundPort"`
	ProxyOutboundPort    int      `json:"ProxyOutboundPort"`
	ExcludeInboundPorts  []string `json:"ExcludeInboundPorts,omitempty"`
	ExcludeOutboundPorts []string `json:"ExcludeOutboundPorts,omitempty"`
	ExcludeOutboundCIDRs []string `json:"ExcludeOutboundCIDRs,omitempty"`
	ExcludeUIDs          []string `json:"ExcludeUIDs,omitempty"`
	ConsulDNSIP          string   `json:"ConsulDNSIP,omitempty"`
	ConsulDNSPort        int      `json:"ConsulDNSPort,omitempty"`
	// NetNS and IptablesProvider are written by consul-k8s' webhook (a
	// json.Marshal of consul's sdk/iptables.Config): the runtime, not the
	// pod, names the netns, and the provider is an in-process hook, always
	// null on the wire. Accepted and ignored, so consul-k8s' pods start.
	NetNS            string          `json:"NetNS,omitempty"`
	IptablesProvider json.RawMessage `json:"IptablesProvider,omitempty"`
}

// Plan is a validated Config: typed, trimmed, CIDRs split by IP family.
type Plan struct {
	ProxyUID             uint32
	InboundPort          uint16
	OutboundPort         uint16
	ExcludeInboundPorts  []PortRange
	ExcludeOutboundPorts []PortRange
	ExcludeUIDs          []IDRange
	ExcludeCIDRs4        []netip.Prefix
	ExcludeCIDRs6        []netip.Prefix
	DNS                  netip.AddrPort // zero: no DNS redirection
	// DNSEvery sends every DNS query of the pod (UDP and TCP port 53, to
	// any nameserver) to DNS; false: only queries to DNS's address on port
	// 53. consul's meaning of ConsulDNSPort: 0 is the former, which
	// consul-k8s' client-agent webhooks write (ConsulDNSIP the Consul DNS
	// Service's ClusterIP, the pod's resolv.conf left alone), a port the
	// latter (its dataplane webhooks point the pod's resolv.conf at
	// 127.0.0.1 and send it to the dataplane's DNS port).
	DNSEvery bool
}

// PortRange is a port (From == To) or an inclusive range.
type PortRange struct{ From, To uint16 }

// IDRange is a UID (From == To) or an inclusive range.
type IDRange struct{ From, To uint32 }

func (p PortRange) String() string {
	if p.From == p.To {
		return strconv.Itoa(int(p.From))
	}
	return fmt.Sprintf("%d:%d", p.From, p.To)
}

func (r IDRange) String() string {
	if r.From == r.To {
		return strconv.FormatUint(uint64(r.From), 10)
	}
	return fmt.Sprintf("%d-%d", r.From, r.To)
}

// ParseConfig decodes the annotation's JSON. Unknown keys are an error: a
// misspelt exclusion must not be silently dropped.
func ParseConfig(annotation string) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader([]byte(annotation)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("redirect config is not valid JSON of the expected shape: %w", err)
	}
	if dec.More() {
		return Config{}, errors.New("redirect config: unexpected data after the JSON object")
	}
	return c, nil
}

// Validate checks every field and returns the plan the rules are built
// from. All problems are reported, each naming the field and the value.
func (c Config) Validate() (*Plan, error) {
	var errs []error
	bad := func(field, value, want string) {
		errs = append(errs, fmt.Errorf("%s: %q is not %s", field, value, want))
	}
	p := &Plan{}
	if uid, err := strconv.ParseUint(strings.TrimSpace(c.ProxyUserID), 10, 32); err != nil {
		bad("ProxyUserID", c.ProxyUserID, "a numeric UID")
	} else {
		p.ProxyUID = uint32(uid)
	}
	port := func(field string, v int) uint16 {
		if v < 1 || v > 65535 {
			bad(field, strconv.Itoa(v), "a port (1-65535)")
			return 0
		}
		return uint16(v)
	}
	p.InboundPort = port("ProxyInboundPort", c.ProxyInboundPort)
	p.OutboundPort = port("ProxyOutboundPort", c.ProxyOutboundPort)
	if p.InboundPort != 0 && p.InboundPort == p.OutboundPort {
		errs = append(errs, fmt.Errorf("ProxyInboundPort and ProxyOutboundPort are both %d; they must differ", p.InboundPort))
	}
	ports := func(field string, in []string) []PortRange {
		var out []PortRange
		for i, v := range SplitList(in...) {
			if r, ok := ParsePortRange(v); ok {
				out = append(out, r)
			} else {
				bad(fmt.Sprintf("%s[%d]", field, i), v, "a port (1-65535) or a range low:high")
			}
		}
		return out
	}
	p.ExcludeInboundPorts = ports("ExcludeInboundPorts", c.ExcludeInboundPorts)
	p.ExcludeOutboundPorts = ports("ExcludeOutboundPorts", c.ExcludeOutboundPorts)
	for i, v := range SplitList(c.ExcludeUIDs...) {
		if r, ok := ParseIDRange(v); ok {
			p.ExcludeUIDs = append(p.ExcludeUIDs, r)
		} else {
			bad(fmt.Sprintf("ExcludeUIDs[%d]", i), v, "a numeric UID or a range low-high")
		}
	}
	for i, v := range SplitList(c.ExcludeOutboundCIDRs...) {
		pfx, ok := ParseCIDR(v)
		switch {
		case !ok:
			bad(fmt.Sprintf("ExcludeOutboundCIDRs[%d]", i), v, "an IPv4 or IPv6 CIDR or address")
		case pfx.Addr().Is4():
			p.ExcludeCIDRs4 = append(p.ExcludeCIDRs4, pfx)
		default:
			p.ExcludeCIDRs6 = append(p.ExcludeCIDRs6, pfx)
		}
	}
	if ip := strings.TrimSpace(c.ConsulDNSIP); ip != "" {
		addr, err := netip.ParseAddr(ip)
		dnsPort := c.ConsulDNSPort
		if dnsPort == 0 {
			dnsPort = 53
		}
		switch {
		case err != nil || addr.Zone() != "":
			bad("ConsulDNSIP", c.ConsulDNSIP, "an IP address")
		case dnsPort < 1 || dnsPort > 65535:
			bad("ConsulDNSPort", strconv.Itoa(c.ConsulDNSPort), "a port (1-65535)")
		default:
			p.DNS = netip.AddrPortFrom(addr.Unmap(), uint16(dnsPort))
			p.DNSEvery = c.ConsulDNSPort == 0
		}
	} else if c.ConsulDNSPort != 0 {
		errs = append(errs, fmt.Errorf("ConsulDNSPort is %d but ConsulDNSIP is empty", c.ConsulDNSPort))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("invalid redirect config: %w", errors.Join(errs...))
	}
	return p, nil
}

// SplitList trims every element and also splits elements that hold a
// comma-separated list ("8080, 9090"), as annotations are often written;
// empty elements are dropped, so a trailing comma is harmless. The webhook
// splits the annotations with it, so that it validates the elements the
// plugin applies.
func SplitList(in ...string) []string {
	var out []string
	for _, v := range in {
		for _, part := range strings.Split(v, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}

// ParsePortRange reads a port or a range low:high (or low-high), digits
// only. The webhook validates annotations with it, so that what it admits
// is what the plugin applies.
func ParsePortRange(s string) (PortRange, bool) {
	lo, hi, isRange := strings.Cut(s, ":")
	if !isRange {
		lo, hi, isRange = strings.Cut(s, "-")
	}
	if !isRange {
		hi = lo
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || a == 0 || b < a {
		return PortRange{}, false
	}
	return PortRange{uint16(a), uint16(b)}, true
}

// ParseIDRange reads a UID or a range low-high.
func ParseIDRange(s string) (IDRange, bool) {
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 32)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 32)
	if err1 != nil || err2 != nil || b < a {
		return IDRange{}, false
	}
	return IDRange{uint32(a), uint32(b)}, true
}

// ParseCIDR accepts a prefix or a bare address, and masks host bits the way
// iptables does.
func ParseCIDR(s string) (netip.Prefix, bool) {
	if pfx, err := netip.ParsePrefix(s); err == nil && pfx.Addr().Zone() == "" {
		if pfx.Addr().Is4In6() {
			pfx = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()-96)
		}
		return pfx.Masked(), pfx.IsValid()
	}
	addr, err := netip.ParseAddr(s)
	if err != nil || addr.Zone() != "" {
		return netip.Prefix{}, false
	}
	addr = addr.Unmap()
	return netip.PrefixFrom(addr, addr.BitLen()), true
}
